-- shortest_prefix_examples: one training example per important state of run $run_id as of
-- iteration $iteration: the positive trajectory through the state with the fewest expert actions
-- after it (METHOD.md step 2.5), loss on the actions from the state on (step 2.6).
-- Grain: one row per important state that has at least one positive trajectory through it.
-- Inputs: state_candidates; $run_id, $iteration, $method ('eef' or 'rft').
-- 'rft' keeps only initial states and trajectories that start from s0 (branch_step = 0).
-- Tie-breaks (ours): fewer expert actions after the state, then fewer steps, then the earlier
-- iteration, then the smaller traj_id.
INSERT INTO training_examples
    (run_id, iteration, method, traj_id, loss_from_step, state_kind, state_traj_id, state_step, task_id)
WITH eligible AS (
    SELECT *
    FROM state_candidates
    WHERE run_id = $run_id
      AND available_from <= $iteration
      AND ($method = 'eef' OR (state_kind = 'initial' AND branch_step = 0))
),

chosen AS (
    -- per state, the candidate with the smallest (expert actions after, steps, iteration, traj_id)
    SELECT
        state_kind,
        task_id,
        state_traj_id,
        state_step,
        arg_min(traj_id, (expert_actions_after, n_steps, iteration, traj_id)) AS traj_id
    FROM eligible
    GROUP BY state_kind, task_id, state_traj_id, state_step
)

SELECT
    $run_id, $iteration, $method, traj_id, state_step, state_kind, state_traj_id, state_step, task_id
FROM chosen;
