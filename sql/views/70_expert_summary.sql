-- expert_summary: how much expert data each task has and how much of it failed.
-- Grain: one row per (task_id, expert).
-- Inputs: trajectories (source = 'expert'), tasks.
CREATE OR REPLACE VIEW expert_summary AS
SELECT
    t.task_id,
    k.env,
    k.split,
    t.expert,
    count(*) AS n_trajectories,
    sum(t.success::INTEGER)::BIGINT AS n_success,
    count(*) - sum(t.success::INTEGER)::BIGINT AS n_failed,
    avg(t.reward) AS mean_reward,
    avg(t.n_steps) AS mean_steps
FROM trajectories AS t
JOIN tasks AS k ON k.task_id = t.task_id
WHERE t.source = 'expert'
GROUP BY ALL;
