-- positive_pool: the successful trajectories a run may learn from.
-- Grain: one row per (run_id, traj_id).
-- Inputs: runs (experts: uses_expert), trajectories, tasks (train split).
-- Rule (METHOD.md step 2.3, CONTRACT.md `eef select`): expert successes are shared by every run (of
-- the experts it learns from, runs.experts);
-- a run's own policy successes join the pool from the iteration that made them on. Other runs'
-- trajectories and evaluation rollouts never enter it. Callers filter iteration <= N.
CREATE OR REPLACE VIEW positive_pool AS
WITH train_successes AS (
    SELECT t.*
    FROM trajectories AS t
    JOIN tasks AS k ON k.task_id = t.task_id
    WHERE t.success
      AND k.split = 'train'
)

SELECT
    r.run_id, e.traj_id, e.task_id, e.source, e.purpose, e.iteration,
    e.branch_traj_id, e.branch_step, e.n_steps
FROM train_successes AS e
CROSS JOIN runs AS r
WHERE e.source = 'expert'
  AND uses_expert(r.experts, e.expert)

UNION ALL

SELECT
    p.run_id, p.traj_id, p.task_id, p.source, p.purpose, p.iteration,
    p.branch_traj_id, p.branch_step, p.n_steps
FROM train_successes AS p
WHERE p.source = 'policy'
  AND p.purpose <> 'eval'
  AND p.run_id IS NOT NULL;
