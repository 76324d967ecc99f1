-- expert_checkpoints: the states from which a run simulates each failed expert trajectory.
-- Grain: one row per (run_id, expert_traj_id, checkpoint).
-- Inputs: runs (n_sims = M; search = 'uniform': a binary-search run's states are binary_search_probes';
--         experts: uses_expert), failed_expert_trajectories.
-- Rule (METHOD.md, step 2.2): for T actions, l = max(1, T // (M + 1)); checkpoint m = 1..M is the
-- state s_(m*l), kept while m*l < T. prev_step is the checkpoint before it (0 = the initial state).
CREATE OR REPLACE VIEW expert_checkpoints AS
WITH spaced AS (
    SELECT
        r.run_id,
        f.traj_id,
        f.task_id,
        f.n_steps,
        r.n_sims,
        greatest(1, f.n_steps // (r.n_sims + 1)) AS spacing
    FROM runs AS r
    CROSS JOIN failed_expert_trajectories AS f
    WHERE coalesce(r.search, 'uniform') = 'uniform'
      AND uses_expert(r.experts, f.expert)
),

numbered AS (
    SELECT *, unnest(generate_series(1, n_sims)) AS checkpoint
    FROM spaced
)

SELECT
    run_id,
    traj_id AS expert_traj_id,
    task_id,
    checkpoint,
    checkpoint * spacing AS step,
    (checkpoint - 1) * spacing AS prev_step
FROM numbered
WHERE checkpoint * spacing < n_steps;
