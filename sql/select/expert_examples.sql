-- expert_examples: the offline baselines' training sets, every expert trajectory of a training task
-- with its outcome, trained from the base model (the paper's SFT-ALL and NAT rows).
-- Grain: one row per expert trajectory (success or failure) of a train-split task.
-- Inputs: trajectories (source = 'expert', of the run's experts: uses_expert), tasks (train split);
--         $run_id, $method ('sft-all' | 'nat').
-- Loss on every action (loss_from_step = 0); state_kind 'expert_success' or 'expert_failure'.
-- 'sft-all' learns failures as if they were successes (prompt_tag NULL); 'nat' (negative-aware
-- training, Wang et al. 2024) tells them apart in the prompt: prompt_tag 'positive' for a success,
-- 'negative' for a failure (eef_tasks/chat.py appends the matching marker to the instruction; the
-- policy is always prompted with the positive one). BC, the paper's SFT-POS, is bc_examples.sql.
INSERT INTO training_examples
    (run_id, iteration, method, traj_id, loss_from_step, state_kind, state_traj_id, state_step, task_id,
     prompt_tag)
WITH expert_trajectories AS (
    SELECT t.traj_id, t.task_id, t.success
    FROM trajectories AS t
    JOIN tasks AS k ON k.task_id = t.task_id
    WHERE t.source = 'expert'
      AND k.split = 'train'
      AND uses_expert((SELECT experts FROM runs WHERE run_id = $run_id), t.expert)
)

SELECT
    $run_id,
    0,
    $method,
    traj_id,
    0,
    CASE WHEN success THEN 'expert_success' ELSE 'expert_failure' END,
    NULL,
    0,
    task_id,
    CASE WHEN $method <> 'nat' THEN NULL WHEN success THEN 'positive' ELSE 'negative' END
FROM expert_trajectories;
