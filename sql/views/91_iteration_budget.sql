-- iteration_budget: what one iteration of a run spent, the `budget` view's phases side by side —
-- the rollouts that feed training (explore + simulate), the evaluation, the training. Methods
-- compare on equal budgets with it (RFT×k vs EEF: rollout_episodes per iteration). Read by
-- `eef compare` (its budget columns) and eef_tasks/experiment.py.
-- Grain: one row per (run_id, iteration) that has a row in `budget`.
-- Inputs: budget (sql/views/90_budget.sql: episodes, steps and tokens from trajectories, wall time
--         and training counts from run_phases).
-- Columns:
--   method                 runs.method
--   explore_episodes, simulate_episodes
--                          policy rollouts from s0 (RFT×k: k per training task) and from expert
--                          checkpoints (prefix replay) of this iteration
--   rollout_episodes       explore_episodes + simulate_episodes: the iteration's rollout budget
--   rollout_env_steps      actions the game executed in those rollouts, replayed expert prefixes included
--   rollout_policy_steps   the policy's own actions in them (n_steps - branch_step)
--   rollout_prompt_tokens, rollout_generated_tokens
--                          prompt tokens read and tokens generated over those rollouts' model calls
--                          (0 without rollouts; NULL when none of them recorded the count)
--   rollout_wall_s         wall time of the explore and simulate phases; NULL while one of them that
--                          has episodes has not finished
--   eval_episodes, eval_env_steps, eval_generated_tokens, eval_wall_s
--                          the same for the evaluate phase (every split it evaluated on; eval_wall_s
--                          NULL until it has finished)
--   train_examples, train_supervised_tokens, train_optimizer_steps, train_wall_s
--                          the train phase: examples, tokens that got loss, optimizer steps, wall time
--                          (NULL when it has not finished, or reused another run's adapter)
--   wall_s                 wall time of every phase of the iteration (select too); NULL while one
--                          of its phases with a budget row has not finished
--   finished               every phase of the iteration that has a budget row has finished
CREATE OR REPLACE VIEW iteration_budget AS
WITH phases AS (
    SELECT
        *,
        phase IN ('explore', 'simulate') AS is_rollout
    FROM budget
)

SELECT
    run_id,
    any_value(method) AS method,
    iteration,
    coalesce(sum(episodes) FILTER (WHERE phase = 'explore'), 0)::BIGINT AS explore_episodes,
    coalesce(sum(episodes) FILTER (WHERE phase = 'simulate'), 0)::BIGINT AS simulate_episodes,
    coalesce(sum(episodes) FILTER (WHERE is_rollout), 0)::BIGINT AS rollout_episodes,
    coalesce(sum(env_steps) FILTER (WHERE is_rollout), 0)::BIGINT AS rollout_env_steps,
    coalesce(sum(policy_steps) FILTER (WHERE is_rollout), 0)::BIGINT AS rollout_policy_steps,
    CASE WHEN count(*) FILTER (WHERE is_rollout) = 0 THEN 0
         ELSE sum(prompt_tokens) FILTER (WHERE is_rollout) END::BIGINT AS rollout_prompt_tokens,
    CASE WHEN count(*) FILTER (WHERE is_rollout) = 0 THEN 0
         ELSE sum(generated_tokens) FILTER (WHERE is_rollout) END::BIGINT AS rollout_generated_tokens,
    CASE WHEN coalesce(bool_and(finished) FILTER (WHERE is_rollout), true)
         THEN round(coalesce(sum(wall_s) FILTER (WHERE is_rollout), 0), 2) END AS rollout_wall_s,
    coalesce(sum(episodes) FILTER (WHERE phase = 'evaluate'), 0)::BIGINT AS eval_episodes,
    coalesce(sum(env_steps) FILTER (WHERE phase = 'evaluate'), 0)::BIGINT AS eval_env_steps,
    CASE WHEN count(*) FILTER (WHERE phase = 'evaluate') = 0 THEN 0
         ELSE sum(generated_tokens) FILTER (WHERE phase = 'evaluate') END::BIGINT AS eval_generated_tokens,
    round(sum(wall_s) FILTER (WHERE phase = 'evaluate' AND finished), 2) AS eval_wall_s,
    sum(train_examples) FILTER (WHERE phase = 'train')::BIGINT AS train_examples,
    sum(train_supervised_tokens) FILTER (WHERE phase = 'train')::BIGINT AS train_supervised_tokens,
    sum(train_optimizer_steps) FILTER (WHERE phase = 'train')::BIGINT AS train_optimizer_steps,
    round(sum(wall_s) FILTER (WHERE phase = 'train' AND finished), 2) AS train_wall_s,
    CASE WHEN bool_and(finished) THEN round(sum(wall_s), 2) END AS wall_s,
    bool_and(finished) AS finished
FROM phases
GROUP BY run_id, iteration;
