-- run_expert_cost: what the expert data a run learns from cost: every expert trajectory of the run's
-- experts (runs.experts, uses_expert) on its training tasks (failures included: they were paid for,
-- whether a method uses them or not), by expert.
-- The denominator of `eef compare --cost`'s win rate per unit of expert cost (eef_tasks/expert_cost.py).
-- Grain: one row per (run_id, expert) with expert trajectories on the run's training tasks, plus one
--        row per run with expert = NULL: the run's total over its experts.
-- Inputs: runs (method; config.config.train_tasks: the training tasks fixed when the pipeline
--         registered the run; a run without them, e.g. one made by `eef select`, counts every
--         train-split task), tasks, trajectories (source = 'expert'; meta.cost_usd, meta tokens).
-- Columns: n_train_tasks, n_trajectories, n_success, n_costed, tokens (prompt + completion),
--          cost_usd (NULL when none is costed), as in expert_cost.
CREATE OR REPLACE VIEW run_expert_cost AS
WITH registered_tasks AS (
    SELECT run_id, unnest(from_json((config -> '$.config.train_tasks'), '["VARCHAR"]')) AS task_id
    FROM runs
    WHERE (config -> '$.config.train_tasks') IS NOT NULL
),

unregistered_tasks AS (
    SELECT runs.run_id, tasks.task_id
    FROM runs
    CROSS JOIN tasks
    WHERE tasks.split = 'train'
      AND runs.run_id NOT IN (SELECT run_id FROM registered_tasks)
),

run_tasks AS (
    SELECT run_id, task_id FROM registered_tasks
    UNION
    SELECT run_id, task_id FROM unregistered_tasks
),

run_experts AS (
    SELECT
        rt.run_id,
        traj.expert,
        traj.task_id,
        traj.success,
        (traj.meta ->> '$.prompt_tokens')::BIGINT + (traj.meta ->> '$.completion_tokens')::BIGINT AS tokens,
        (traj.meta ->> '$.cost_usd')::DOUBLE AS cost_usd
    FROM run_tasks AS rt
    JOIN runs USING (run_id)
    JOIN trajectories AS traj ON traj.task_id = rt.task_id
    WHERE traj.source = 'expert'
      AND uses_expert(runs.experts, traj.expert)
),

task_counts AS (
    SELECT run_id, count(*) AS n_train_tasks
    FROM run_tasks
    GROUP BY run_id
)

SELECT
    e.run_id,
    runs.method,
    e.expert,
    any_value(c.n_train_tasks) AS n_train_tasks,
    count(*) AS n_trajectories,
    count(*) FILTER (WHERE e.success) AS n_success,
    count(e.cost_usd) AS n_costed,
    sum(e.tokens) FILTER (WHERE e.cost_usd IS NOT NULL)::BIGINT AS tokens,
    sum(e.cost_usd) AS cost_usd
FROM run_experts AS e
JOIN runs USING (run_id)
JOIN task_counts AS c USING (run_id)
GROUP BY GROUPING SETS ((e.run_id, runs.method, e.expert), (e.run_id, runs.method));
