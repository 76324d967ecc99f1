-- bc_examples: the behaviour-cloning set: every successful expert trajectory of a training task.
-- Grain: one row per expert success in the pool of $run_id.
-- Inputs: positive_pool; $run_id. Loss on every action (loss_from_step = 0).
INSERT INTO training_examples
    (run_id, iteration, method, traj_id, loss_from_step, state_kind, state_traj_id, state_step, task_id)
SELECT
    $run_id, 0, 'bc', traj_id, 0, 'expert_success', NULL, 0, task_id
FROM positive_pool
WHERE run_id = $run_id
  AND source = 'expert';
