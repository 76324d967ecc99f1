-- binary_search_points: what a run with search = 'binary' knows, in each iteration, about each failed
-- expert trajectory: the outcome of the policy from s0, from every expert state it simulated, and
-- the trajectory's own end. The bisection (binary_search_probes) and its need-recover states
-- (need_recover_states) read it.
-- Grain: one row per (run_id, iteration, expert_traj_id, step) with step 0 (kind 'initial'), a
--        simulated state 0 < step < T (kind 'probe') or step T (kind 'end').
-- Inputs: runs (search = 'binary'; experts: uses_expert), failed_expert_trajectories (those with
--         T >= 2 actions, which have a state s_k with 0 < k < T), trajectories (the run's explore
--         rollouts and simulations).
-- Rules (README, "Binary search"): an iteration of the run is one that has explore rollouts or
-- simulations. 'initial' succeeded when a rollout from s0 of the task succeeded in that iteration
-- (none stored: not succeeded); 'probe' when a simulation from s_k did (several: any); 'end' never
-- succeeds (the expert failed from there, and s_T is not a state to continue from).
CREATE OR REPLACE VIEW binary_search_points AS
WITH binary_runs AS (
    SELECT run_id, experts
    FROM runs
    WHERE search = 'binary'
),

failed_experts AS (
    SELECT traj_id, task_id, n_steps, expert
    FROM failed_expert_trajectories
    WHERE n_steps >= 2
),

policy_runs AS (
    SELECT run_id, iteration, task_id, branch_traj_id, branch_step, success
    FROM trajectories
    WHERE source = 'policy'
      AND purpose IN ('explore', 'simulate')
      AND run_id IN (SELECT run_id FROM binary_runs)
),

searches AS (
    -- one bisection per run, iteration and failed expert trajectory
    SELECT i.run_id, i.iteration, f.traj_id AS expert_traj_id, f.task_id, f.n_steps
    FROM (SELECT DISTINCT run_id, iteration FROM policy_runs) AS i
    JOIN binary_runs AS r ON r.run_id = i.run_id
    CROSS JOIN failed_experts AS f
    WHERE uses_expert(r.experts, f.expert)
),

from_initial_state AS (
    SELECT run_id, iteration, task_id, bool_or(success) AS any_success
    FROM policy_runs
    WHERE branch_step = 0
    GROUP BY run_id, iteration, task_id
),

from_expert_state AS (
    SELECT run_id, iteration, branch_traj_id AS expert_traj_id, branch_step AS step, bool_or(success) AS any_success
    FROM policy_runs
    WHERE branch_step > 0
    GROUP BY run_id, iteration, branch_traj_id, branch_step
)

SELECT s.run_id, s.iteration, s.task_id, s.expert_traj_id, s.n_steps,
       0 AS step, 'initial' AS kind, coalesce(o.any_success, false) AS succeeded
FROM searches AS s
LEFT JOIN from_initial_state AS o
    ON  o.run_id = s.run_id
    AND o.iteration = s.iteration
    AND o.task_id = s.task_id

UNION ALL

SELECT s.run_id, s.iteration, s.task_id, s.expert_traj_id, s.n_steps,
       o.step, 'probe' AS kind, o.any_success AS succeeded
FROM searches AS s
JOIN from_expert_state AS o
    ON  o.run_id = s.run_id
    AND o.iteration = s.iteration
    AND o.expert_traj_id = s.expert_traj_id
WHERE o.step < s.n_steps

UNION ALL

SELECT s.run_id, s.iteration, s.task_id, s.expert_traj_id, s.n_steps,
       s.n_steps AS step, 'end' AS kind, false AS succeeded
FROM searches AS s;
