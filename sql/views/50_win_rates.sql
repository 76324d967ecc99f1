-- win_rates: the one definition of win rate and mean reward. Every caller reads it: `eef evaluate`
-- and the pipeline's evaluate phase (eef_tasks/evaluation.py), run_comparison (`eef compare`,
-- the Prefect artifacts), ad-hoc analysis.
-- Grain: one row per (run_id, iteration, purpose, model_id, split).
-- Inputs: trajectories, tasks. Expert data appears with run_id NULL and purpose 'expert'.
-- Definition: per TASK. A task counts as won when its episode succeeded (reward 1); with k samples
-- of a task (RFT x k, several eval samples) the task's win rate is the mean over its samples.
-- win_rate is the mean of that over tasks, so every task weighs the same however many samples it
-- has; mean_reward likewise. With one sample per task both equal the share of trajectories.
CREATE OR REPLACE VIEW win_rates AS
WITH per_task AS (
    SELECT
        traj.run_id,
        traj.iteration,
        traj.purpose,
        traj.model_id,
        task.split,
        traj.task_id,
        count(*) AS n_trajectories,
        sum(traj.success::INTEGER) AS n_success,
        avg(traj.success::INTEGER) AS task_win_rate,
        avg(traj.reward) AS task_mean_reward
    FROM trajectories AS traj
    JOIN tasks AS task ON task.task_id = traj.task_id
    GROUP BY traj.run_id, traj.iteration, traj.purpose, traj.model_id, task.split, traj.task_id
)

SELECT
    run_id,
    iteration,
    purpose,
    model_id,
    split,
    sum(n_trajectories)::BIGINT AS n_trajectories,
    count(*) AS n_tasks,
    sum(n_success)::BIGINT AS n_success,
    avg(task_win_rate) AS win_rate,
    avg(task_mean_reward) AS mean_reward
FROM per_task
GROUP BY run_id, iteration, purpose, model_id, split;
