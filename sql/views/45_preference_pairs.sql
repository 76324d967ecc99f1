-- preference_pairs: DPO pairs from important states (the paper's future work): for each important
-- state of a selected eef or rft training set, the selected positive continuation (chosen) and a
-- failed continuation from the same state (rejected).
-- Grain: one row per (run_id, iteration, method, important state) that has a training example and
--        at least one failed continuation.
-- Inputs: training_examples (initial and need_recover rows: the chosen, one per state),
--         trajectories (the run's failed explore rollouts and simulations).
-- Rule (ours): a failed continuation from s_k is a failed trajectory of the same run with iteration
-- <= the training set's whose own actions start at s_k: a rollout from s0 (branch_step 0) for an
-- initial state, a simulation of the state's expert trajectory with branch_step = k for a
-- need-recover state; both continuations hold at least one action. Of several, the latest iteration (the policy nearest the one being tuned),
-- then the smaller traj_id. The pair's prompt is the chat up to s_k (eef_tasks/preferences.py).
CREATE OR REPLACE VIEW preference_pairs AS
WITH chosen AS (
    SELECT e.run_id, e.iteration, e.method, e.state_kind, e.task_id, e.state_traj_id, e.state_step,
           e.traj_id AS chosen_traj_id
    FROM training_examples AS e
    JOIN trajectories AS t ON t.traj_id = e.traj_id
    WHERE e.state_kind IN ('initial', 'need_recover')
      AND t.n_steps > e.state_step
),

failed_continuations AS (
    SELECT run_id, iteration, task_id, branch_traj_id, branch_step, traj_id
    FROM trajectories
    WHERE source = 'policy'
      AND purpose IN ('explore', 'simulate')
      AND NOT success
      AND n_steps > branch_step
),

candidates AS (
    SELECT
        c.*,
        f.traj_id AS rejected_traj_id,
        f.iteration AS rejected_iteration
    FROM chosen AS c
    JOIN failed_continuations AS f
        ON  f.run_id = c.run_id
        AND f.iteration <= c.iteration
        AND f.task_id = c.task_id
        AND f.branch_step = c.state_step
        AND f.branch_traj_id IS NOT DISTINCT FROM c.state_traj_id
)

SELECT
    run_id, iteration, method, state_kind, task_id, state_traj_id, state_step, chosen_traj_id,
    arg_min(rejected_traj_id, (-rejected_iteration, rejected_traj_id)) AS rejected_traj_id
FROM candidates
GROUP BY run_id, iteration, method, state_kind, task_id, state_traj_id, state_step, chosen_traj_id;
