-- need_recover_states: checkpoints from which the policy failed right after succeeding from the
-- checkpoint before; the expert actions between the two are potentially harmful.
-- Grain: one row per (run_id, iteration, expert_traj_id, step): the iteration that found it.
-- Inputs: expert_checkpoints, trajectories (the run's explore rollouts and simulations).
-- Rule (METHOD.md, step 2.4): c_m is need-recover in iteration i when, in iteration i, a run from
-- c_(m-1) succeeded and the simulation from c_m failed; c_0 = s0, whose runs are the iteration's
-- rollouts from the initial state. Several runs from one state (RFT x k) count as a success when
-- any of them succeeded (ours). A checkpoint never simulated in iteration i is not judged there.
CREATE OR REPLACE VIEW need_recover_states AS
WITH outcomes_by_start AS (
    SELECT
        run_id,
        iteration,
        task_id,
        branch_traj_id,          -- NULL for runs from s0
        branch_step,
        bool_or(success) AS any_success
    FROM trajectories
    WHERE source = 'policy'
      AND purpose IN ('explore', 'simulate')
    GROUP BY ALL
)

SELECT
    c.run_id,
    here.iteration,
    c.task_id,
    c.expert_traj_id,
    c.checkpoint,
    c.step,
    c.prev_step
FROM expert_checkpoints AS c
JOIN outcomes_by_start AS here
    ON  here.run_id = c.run_id
    AND here.branch_traj_id = c.expert_traj_id
    AND here.branch_step = c.step
JOIN outcomes_by_start AS before
    ON  before.run_id = c.run_id
    AND before.iteration = here.iteration
    AND before.task_id = c.task_id
    AND before.branch_step = c.prev_step
    AND (c.prev_step = 0 OR before.branch_traj_id = c.expert_traj_id)
WHERE before.any_success
  AND NOT here.any_success;
