-- failed_expert_trajectories: the expert failures of training tasks, the trajectories EEF simulates from.
-- Grain: one row per failed expert trajectory of a train-split task (every expert; a run keeps those
--        of its experts with uses_expert).
-- Inputs: trajectories (source = 'expert', success false), tasks (train split).
-- Rule (METHOD.md, step 2.2): the states of these trajectories are where simulations start;
-- expert_checkpoints and binary_search_points choose which of them.
CREATE OR REPLACE VIEW failed_expert_trajectories AS
SELECT t.traj_id, t.task_id, t.n_steps, t.expert
FROM trajectories AS t
JOIN tasks AS k ON k.task_id = t.task_id
WHERE t.source = 'expert'
  AND NOT t.success
  AND k.split = 'train';
