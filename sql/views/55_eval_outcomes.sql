-- eval_outcomes: how each iteration's adapter did on each evaluation task: the per-task numbers
-- behind win_rates (sql/views/50_win_rates.sql), kept per task so that intervals can resample tasks
-- (eef_tasks/experiment.py: the dev-chosen iteration, the paired bootstrap over tasks and seeds).
-- Grain: one row per (run_id, iteration, split, task_id) with purpose = 'eval' trajectories.
-- Inputs: trajectories (purpose 'eval'), tasks (split), run_phases (iteration 0's train summary:
--         adapter, reused).
-- Rule: a task's win_rate is the mean success of its eval samples, mean_reward the mean reward
-- (with one sample: 1/0 and its reward), as in win_rates. A run whose iteration 0 reused another
-- run's behaviour-cloning adapter (bc_adapter: its train phase summary says reused, with that
-- adapter's path) and has no iteration-0 eval trajectories of its own takes the iteration-0 rows of
-- the run that trained that adapter (same path, not reused; the smallest run_id if several):
-- the same model, evaluated once. evaluated_by names the run whose trajectories a row counts.
CREATE OR REPLACE VIEW eval_outcomes AS
WITH per_task AS (
    SELECT
        traj.run_id,
        traj.iteration,
        task.split,
        traj.task_id,
        count(*) AS n_trajectories,
        avg(traj.success::INTEGER) AS win_rate,
        avg(traj.reward) AS mean_reward
    FROM trajectories AS traj
    JOIN tasks AS task ON task.task_id = traj.task_id
    WHERE traj.purpose = 'eval'
      AND traj.source = 'policy'
      AND traj.run_id IS NOT NULL
    GROUP BY traj.run_id, traj.iteration, task.split, traj.task_id
),

bc_adapters AS (
    SELECT
        run_id,
        summary ->> '$.adapter' AS adapter,
        coalesce((summary ->> '$.reused')::BOOLEAN, false) AS reused
    FROM run_phases
    WHERE iteration = 0
      AND phase = 'train'
),

bc_trainers AS (
    -- the run that trained each reused adapter
    SELECT
        user_run.run_id,
        min(trainer.run_id) AS trainer_run_id
    FROM bc_adapters AS user_run
    JOIN bc_adapters AS trainer
        ON  trainer.adapter = user_run.adapter
        AND NOT trainer.reused
        AND trainer.run_id <> user_run.run_id
    WHERE user_run.reused
      AND NOT EXISTS (
          SELECT 1 FROM per_task AS own
          WHERE own.run_id = user_run.run_id AND own.iteration = 0
      )
    GROUP BY user_run.run_id
),

borrowed AS (
    SELECT
        t.run_id,
        0 AS iteration,
        p.split,
        p.task_id,
        p.n_trajectories,
        p.win_rate,
        p.mean_reward,
        p.run_id AS evaluated_by
    FROM bc_trainers AS t
    JOIN per_task AS p
        ON  p.run_id = t.trainer_run_id
        AND p.iteration = 0
)

SELECT run_id, iteration, split, task_id, n_trajectories, win_rate, mean_reward, run_id AS evaluated_by
FROM per_task
UNION ALL
SELECT run_id, iteration, split, task_id, n_trajectories, win_rate, mean_reward, evaluated_by
FROM borrowed;
