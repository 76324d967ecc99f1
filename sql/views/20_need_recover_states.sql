-- need_recover_states: checkpoints from which the policy failed right after succeeding from the
-- checkpoint before; the expert actions between the two are potentially harmful.
-- Grain: one row per (run_id, iteration, expert_traj_id, step): the iteration that found it.
-- Inputs: expert_checkpoints, trajectories (the run's explore rollouts and simulations);
--         binary_search_points for runs with search = 'binary'.
-- Rule (METHOD.md, step 2.4): c_m is need-recover in iteration i when, in iteration i, a run from
-- c_(m-1) succeeded and the simulation from c_m failed; c_0 = s0, whose runs are the iteration's
-- rollouts from the initial state. Several runs from one state (RFT x k) count as a success when
-- any of them succeeded (ours). A checkpoint never simulated in iteration i is not judged there.
-- Binary search (README, "Binary search"): the same rule over the states the bisection simulated in
-- iteration i, in step order: a simulated state that failed right after a known point (s0 or a
-- simulated state) that succeeded; checkpoint is NULL there (no fixed m).
CREATE OR REPLACE VIEW need_recover_states AS
WITH policy_runs AS (
    SELECT run_id, iteration, task_id, branch_traj_id, branch_step, success
    FROM trajectories
    WHERE source = 'policy'
      AND purpose IN ('explore', 'simulate')
),

from_initial_state AS (
    -- per run, iteration and task: did a rollout from s0 succeed
    SELECT run_id, iteration, task_id, bool_or(success) AS any_success
    FROM policy_runs
    WHERE branch_step = 0
    GROUP BY run_id, iteration, task_id
),

from_expert_state AS (
    -- per run, iteration and expert state s_k: did a simulation from it succeed
    SELECT
        run_id,
        iteration,
        branch_traj_id AS expert_traj_id,
        branch_step AS step,
        bool_or(success) AS any_success
    FROM policy_runs
    WHERE branch_step > 0
    GROUP BY run_id, iteration, branch_traj_id, branch_step
),

judged AS (
    SELECT
        c.run_id,
        here.iteration,
        c.task_id,
        c.expert_traj_id,
        c.checkpoint,
        c.step,
        c.prev_step,
        here.any_success AS succeeded_here,
        CASE WHEN c.prev_step = 0 THEN s0.any_success ELSE before.any_success END AS succeeded_before
    FROM expert_checkpoints AS c
    JOIN from_expert_state AS here
        ON  here.run_id = c.run_id
        AND here.expert_traj_id = c.expert_traj_id
        AND here.step = c.step
    LEFT JOIN from_expert_state AS before
        ON  before.run_id = c.run_id
        AND before.iteration = here.iteration
        AND before.expert_traj_id = c.expert_traj_id
        AND before.step = c.prev_step
    LEFT JOIN from_initial_state AS s0
        ON  s0.run_id = c.run_id
        AND s0.iteration = here.iteration
        AND s0.task_id = c.task_id
),

binary_search_neighbours AS (
    SELECT
        *,
        lag(step) OVER search AS prev_step,
        lag(succeeded) OVER search AS succeeded_before
    FROM binary_search_points
    WINDOW search AS (PARTITION BY run_id, iteration, expert_traj_id ORDER BY step)
)

SELECT run_id, iteration, task_id, expert_traj_id, checkpoint, step, prev_step
FROM judged
WHERE succeeded_before
  AND NOT succeeded_here

UNION ALL

SELECT run_id, iteration, task_id, expert_traj_id, NULL::INTEGER AS checkpoint, step, prev_step
FROM binary_search_neighbours
WHERE kind = 'probe'
  AND succeeded_before
  AND NOT succeeded;
