-- state_candidates: each important state with every positive trajectory that passes through it.
-- Grain: one row per (run_id, important state, traj_id); a state is the initial state of a task
--        (state_traj_id NULL, state_step 0) or a need-recover state (state_traj_id, state_step).
-- Inputs: positive_pool, need_recover_states.
-- expert_actions_after (METHOD.md "Terms"): branch_step - k for a simulation, 0 for a rollout from
-- s0, n_steps - k for an expert trajectory. available_from: the first iteration at which both the
-- state is important and the trajectory is in the pool; a selection as of iteration N keeps
-- available_from <= N.
CREATE OR REPLACE VIEW state_candidates AS
WITH found_need_recover AS (
    SELECT run_id, task_id, expert_traj_id, step, min(iteration) AS found_in
    FROM need_recover_states
    GROUP BY ALL
),

initial_state_candidates AS (
    -- every trajectory of a task passes through that task's s0
    SELECT
        p.run_id, 'initial' AS state_kind, p.task_id,
        NULL::VARCHAR AS state_traj_id, 0 AS state_step,
        p.traj_id, p.source, p.iteration, p.branch_step, p.n_steps,
        p.iteration AS available_from
    FROM positive_pool AS p
),

need_recover_candidates AS (
    -- need-recover states lie on failed expert trajectories, so the positive trajectories through
    -- s_k of expert e are the simulations that replayed at least k of e's actions
    SELECT
        p.run_id, 'need_recover' AS state_kind, s.task_id,
        s.expert_traj_id AS state_traj_id, s.step AS state_step,
        p.traj_id, p.source, p.iteration, p.branch_step, p.n_steps,
        greatest(p.iteration, s.found_in) AS available_from
    FROM found_need_recover AS s
    JOIN positive_pool AS p
        ON  p.run_id = s.run_id
        AND p.branch_traj_id = s.expert_traj_id
        AND p.branch_step >= s.step
),

candidates AS (
    SELECT * FROM initial_state_candidates
    UNION ALL
    SELECT * FROM need_recover_candidates
)

SELECT
    *,
    CASE WHEN source = 'expert' THEN n_steps ELSE branch_step END - state_step AS expert_actions_after
FROM candidates;
