-- run_budget: what a whole run spent: the sums of `iteration_budget` over its iterations, and its
-- rollout budget per iteration (the quantity RFT×k's k equalises with EEF). `eef compare --totals`
-- shows it; the experiment's results (eef_tasks/experiment.py) carry its columns per run.
-- Grain: one row per run_id that has a row in `iteration_budget`.
-- Inputs: iteration_budget (sql/views/91_iteration_budget.sql).
-- Columns:
--   method, n_iterations   runs.method; iterations after behaviour cloning with a budget row
--   rollout_episodes_per_iteration
--                          mean rollout_episodes over those iterations (>= 1; NULL without any)
--   rollout_episodes, rollout_env_steps, rollout_policy_steps, rollout_prompt_tokens,
--   rollout_generated_tokens, eval_episodes, eval_env_steps, eval_generated_tokens,
--   train_examples, train_supervised_tokens, train_optimizer_steps
--                          sums over every iteration, behaviour cloning included (a token sum covers
--                          the iterations that recorded tokens; NULL when none with episodes did)
--   rollout_wall_s, eval_wall_s, train_wall_s, wall_s
--                          sums of the finished phases' wall times (s, rounded to 0.01); wall_s is NULL while an
--                          iteration has an unfinished phase
--   finished               every iteration's phases with a budget row have finished
-- A run that reused another run's behaviour-cloning adapter (bc_adapter) spent nothing on it: that
-- training is in the other run's budget.
CREATE OR REPLACE VIEW run_budget AS
SELECT
    run_id,
    any_value(method) AS method,
    count(*) FILTER (WHERE iteration >= 1) AS n_iterations,
    avg(rollout_episodes) FILTER (WHERE iteration >= 1) AS rollout_episodes_per_iteration,
    sum(rollout_episodes)::BIGINT AS rollout_episodes,
    sum(rollout_env_steps)::BIGINT AS rollout_env_steps,
    sum(rollout_policy_steps)::BIGINT AS rollout_policy_steps,
    CASE WHEN sum(rollout_episodes) = 0 THEN 0
         ELSE sum(rollout_prompt_tokens) FILTER (WHERE rollout_episodes > 0) END::BIGINT AS rollout_prompt_tokens,
    CASE WHEN sum(rollout_episodes) = 0 THEN 0
         ELSE sum(rollout_generated_tokens) FILTER (WHERE rollout_episodes > 0) END::BIGINT AS rollout_generated_tokens,
    round(sum(rollout_wall_s), 2) AS rollout_wall_s,
    sum(eval_episodes)::BIGINT AS eval_episodes,
    sum(eval_env_steps)::BIGINT AS eval_env_steps,
    CASE WHEN sum(eval_episodes) = 0 THEN 0
         ELSE sum(eval_generated_tokens) FILTER (WHERE eval_episodes > 0) END::BIGINT AS eval_generated_tokens,
    round(sum(eval_wall_s), 2) AS eval_wall_s,
    sum(train_examples)::BIGINT AS train_examples,
    sum(train_supervised_tokens)::BIGINT AS train_supervised_tokens,
    sum(train_optimizer_steps)::BIGINT AS train_optimizer_steps,
    round(sum(train_wall_s), 2) AS train_wall_s,
    CASE WHEN bool_and(finished) THEN round(sum(wall_s), 2) END AS wall_s,
    bool_and(finished) AS finished
FROM iteration_budget
GROUP BY run_id;
