-- budget: what a run spent in each phase of each iteration: episodes, environment steps, prompt and
-- generated tokens, training tokens, wall time. Methods compare on equal budgets with it (RFT×k vs
-- EEF: episodes, env steps, generated tokens per iteration).
-- Grain: one row per (run_id, iteration, phase) that has a finished phase in run_phases or stored
--        policy trajectories (a phase killed part-way has rows with finished = false and no wall_s).
-- Inputs: runs (method),
--         run_phases (summary.wall_s; train: n_examples, n_supervised_tokens, n_optimizer_steps),
--         trajectories (source = 'policy', not another run's; purpose explore / simulate / eval as phase
--         explore / simulate / evaluate; meta.prompt_tokens, meta.prefill_tokens, meta.completion_tokens).
-- env_steps counts every action the game executed, a simulation's replayed expert prefix included;
-- policy_steps only the policy's own (n_steps - branch_step). prompt_tokens is what a stateless
-- server reads over all calls, prefill_tokens what the hf engine computed (the rest came from its KV
-- cache); a token column is NULL where trajectories of the phase lack that count in meta (stored
-- before it was recorded, or by an importer), 0 for phases without rollouts (select, train).
-- A phase rerun after a kill keeps the wall time of its finishing attempt only.
CREATE OR REPLACE VIEW budget AS
WITH finished_phases AS (
    SELECT
        run_id,
        iteration,
        phase,
        (summary ->> '$.wall_s')::DOUBLE AS wall_s,
        (summary ->> '$.n_examples')::BIGINT AS train_examples,
        (summary ->> '$.n_supervised_tokens')::BIGINT AS train_supervised_tokens,
        (summary ->> '$.n_optimizer_steps')::BIGINT AS train_optimizer_steps
    FROM run_phases
),

policy_trajectories AS (
    SELECT
        run_id,
        iteration,
        CASE purpose WHEN 'eval' THEN 'evaluate' ELSE purpose END AS phase,
        n_steps,
        branch_step,
        (meta ->> '$.prompt_tokens')::BIGINT AS prompt_tokens,
        (meta ->> '$.prefill_tokens')::BIGINT AS prefill_tokens,
        (meta ->> '$.completion_tokens')::BIGINT AS completion_tokens
    FROM trajectories
    WHERE source = 'policy'
      AND run_id IS NOT NULL
),

rollout_spend AS (
    SELECT
        run_id,
        iteration,
        phase,
        count(*) AS episodes,
        sum(n_steps)::BIGINT AS env_steps,
        sum(n_steps - branch_step)::BIGINT AS policy_steps,
        sum(prompt_tokens)::BIGINT AS prompt_tokens,
        sum(prefill_tokens)::BIGINT AS prefill_tokens,
        sum(completion_tokens)::BIGINT AS generated_tokens
    FROM policy_trajectories
    GROUP BY run_id, iteration, phase
)

SELECT
    coalesce(spend.run_id, done.run_id) AS run_id,
    runs.method,
    coalesce(spend.iteration, done.iteration) AS iteration,
    coalesce(spend.phase, done.phase) AS phase,
    done.run_id IS NOT NULL AS finished,
    coalesce(spend.episodes, 0) AS episodes,
    coalesce(spend.env_steps, 0) AS env_steps,
    coalesce(spend.policy_steps, 0) AS policy_steps,
    CASE WHEN spend.run_id IS NULL THEN 0 ELSE spend.prompt_tokens END AS prompt_tokens,
    CASE WHEN spend.run_id IS NULL THEN 0 ELSE spend.prefill_tokens END AS prefill_tokens,
    CASE WHEN spend.run_id IS NULL THEN 0 ELSE spend.generated_tokens END AS generated_tokens,
    done.train_examples,
    done.train_supervised_tokens,
    done.train_optimizer_steps,
    done.wall_s
FROM rollout_spend AS spend
FULL OUTER JOIN finished_phases AS done
    ON done.run_id = spend.run_id
   AND done.iteration = spend.iteration
   AND done.phase = spend.phase
LEFT JOIN runs
    ON runs.run_id = coalesce(spend.run_id, done.run_id);
