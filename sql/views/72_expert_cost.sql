-- expert_cost: what each expert's data cost, in tokens and money, per trajectory and per success.
-- Grain: one row per (env, expert) with expert trajectories.
-- Inputs: trajectories (source = 'expert'; meta.prompt_tokens, meta.completion_tokens, meta.cost_usd:
--         an LLM expert's counts from its responses, a synthetic expert's from its stated cost model,
--         meta.cost_model), tasks (env).
-- Columns:
--   n_trajectories, n_success     every trajectory of the expert, and those with reward 1
--   n_costed                      trajectories whose meta holds cost_usd (gold paths and data stored
--                                 before costs were recorded have none)
--   prompt_tokens, completion_tokens, tokens, cost_usd   sums over the costed trajectories (NULL when
--                                 none is costed)
--   cost_per_trajectory           cost_usd / n_costed
--   cost_per_success              cost_usd / successes among the costed trajectories: what one
--                                 successful trajectory cost, the failures paid on the way included
--   stated_cost_model             true when the costs come from a stated model (synthetic experts),
--                                 false when measured (an LLM's usage), NULL when none is costed
CREATE OR REPLACE VIEW expert_cost AS
WITH expert_trajectories AS (
    SELECT
        task.env,
        traj.expert,
        traj.success,
        (traj.meta ->> '$.prompt_tokens')::BIGINT AS prompt_tokens,
        (traj.meta ->> '$.completion_tokens')::BIGINT AS completion_tokens,
        (traj.meta ->> '$.cost_usd')::DOUBLE AS cost_usd,
        coalesce((traj.meta ->> '$.cost_model.stated')::BOOLEAN, false) AS stated
    FROM trajectories AS traj
    JOIN tasks AS task USING (task_id)
    WHERE traj.source = 'expert'
),

per_expert AS (
    SELECT
        env,
        expert,
        count(*) AS n_trajectories,
        count(*) FILTER (WHERE success) AS n_success,
        count(cost_usd) AS n_costed,
        count(*) FILTER (WHERE success AND cost_usd IS NOT NULL) AS n_costed_success,
        sum(prompt_tokens) FILTER (WHERE cost_usd IS NOT NULL)::BIGINT AS prompt_tokens,
        sum(completion_tokens) FILTER (WHERE cost_usd IS NOT NULL)::BIGINT AS completion_tokens,
        sum(cost_usd) AS cost_usd,
        bool_or(stated) FILTER (WHERE cost_usd IS NOT NULL) AS stated_cost_model
    FROM expert_trajectories
    GROUP BY env, expert
)

SELECT
    env,
    expert,
    n_trajectories,
    n_success,
    n_costed,
    prompt_tokens,
    completion_tokens,
    prompt_tokens + completion_tokens AS tokens,
    cost_usd,
    cost_usd / nullif(n_costed, 0) AS cost_per_trajectory,
    cost_usd / nullif(n_costed_success, 0) AS cost_per_success,
    stated_cost_model
FROM per_expert;
