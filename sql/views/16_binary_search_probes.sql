-- binary_search_probes: the expert states a run with search = 'binary' simulates next, one round of
-- its bisection; no row for an (iteration, expert trajectory) whose search has ended.
-- Grain: one row per (run_id, iteration, expert_traj_id, step) to simulate from.
-- Inputs: binary_search_points.
-- Rule (README, "Binary search"). Sort the known points of a search (s0, the states simulated so far,
-- s_T) by step; a gap is two neighbouring points more than one step apart.
--   * bisect: once any known point succeeded, the midpoint floor((a + b) / 2) of every gap whose two
--     ends differ (success then failure: to pin the need-recover state; failure then success: to
--     pin the earliest success). Each such gap keeps exactly one differing pair, so at most two are
--     refined at a time, each in at most ceil(log2 T) rounds, down to neighbouring steps.
--   * seek: while no known point succeeded, the midpoint of the widest gap (of equally wide ones,
--     the earliest), until ceil(log2 T) states have been simulated; then the search gives up.
-- So a search simulates at most 3 * ceil(log2 T) states, and never one state twice.
CREATE OR REPLACE VIEW binary_search_probes AS
WITH neighbours AS (
    SELECT
        *,
        lead(step) OVER search AS next_step,
        lead(succeeded) OVER search AS next_succeeded,
        bool_or(succeeded) OVER (PARTITION BY run_id, iteration, expert_traj_id) AS any_success,
        count(*) FILTER (WHERE kind = 'probe') OVER (PARTITION BY run_id, iteration, expert_traj_id) AS n_probes
    FROM binary_search_points
    WINDOW search AS (PARTITION BY run_id, iteration, expert_traj_id ORDER BY step)
),

gaps AS (
    SELECT *, (step + next_step) // 2 AS midpoint
    FROM neighbours
    WHERE next_step - step > 1
),

bisect AS (
    SELECT run_id, iteration, task_id, expert_traj_id, midpoint AS step, 'bisect' AS reason
    FROM gaps
    WHERE any_success
      AND succeeded <> next_succeeded
),

seek AS (
    SELECT
        run_id, iteration, task_id, expert_traj_id,
        arg_min(midpoint, (step - next_step, step)) AS step,
        'seek' AS reason
    FROM gaps
    WHERE NOT any_success
      AND n_probes < ceil(log2(n_steps))
    GROUP BY run_id, iteration, task_id, expert_traj_id
)

SELECT * FROM bisect
UNION ALL
SELECT * FROM seek;
