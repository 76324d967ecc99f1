-- win_rates: success rate and mean reward of the policy, for ad-hoc analysis and the compare table.
-- Grain: one row per (run_id, iteration, purpose, model_id, split).
-- Inputs: trajectories, tasks. Expert data appears with run_id NULL and purpose 'expert'.
CREATE OR REPLACE VIEW win_rates AS
SELECT
    t.run_id,
    t.iteration,
    t.purpose,
    t.model_id,
    k.split,
    count(*) AS n_trajectories,
    count(DISTINCT t.task_id) AS n_tasks,
    sum(t.success::INTEGER)::BIGINT AS n_success,
    avg(t.success::INTEGER) AS win_rate,
    avg(t.reward) AS mean_reward
FROM trajectories AS t
JOIN tasks AS k ON k.task_id = t.task_id
GROUP BY ALL;
