-- 0003_import_rules: two rules the selection relies on become constraints, so that no writer (an
-- import, a rollout, a hand-written INSERT) can break them: every policy trajectory belongs to a
-- run, and a step's reward is a finite number (NaN and ±Infinity are not rewards).
-- DuckDB cannot add a CHECK to an existing table, so trajectories and steps are rebuilt (steps
-- references trajectories, so both: data out to temporary tables, tables re-created, data back).
-- A store holding rows that break the new rules is not upgraded: the migration stops, naming
-- them, and the store is left as it was (the whole migration is one transaction).
-- Forward-only: never edit this file once released; add a new numbered migration instead.

SELECT error('cannot apply 0003_import_rules: policy trajectories without a run_id (e.g. '
             || string_agg(traj_id, ', ' ORDER BY traj_id) || '); give them a run_id or delete '
             || 'them (with their steps), then run eef init again; nothing was changed')
FROM (SELECT traj_id FROM trajectories WHERE source = 'policy' AND run_id IS NULL ORDER BY traj_id LIMIT 5)
HAVING count(*) > 0;

SELECT error('cannot apply 0003_import_rules: steps with a NaN or infinite reward (e.g. '
             || string_agg(traj_id || ' step ' || step, ', ' ORDER BY traj_id, step) || '); set '
             || 'those rewards to NULL or a number, then run eef init again; nothing was changed')
FROM (SELECT traj_id, step FROM steps WHERE NOT isfinite(reward) ORDER BY traj_id, step LIMIT 5)
HAVING count(*) > 0;

CREATE TEMP TABLE trajectories_0002 AS SELECT * FROM trajectories;
CREATE TEMP TABLE steps_0002 AS SELECT * FROM steps;
DROP TABLE steps;
DROP TABLE trajectories;

-- as in 0001, plus: policy trajectories have a run_id
CREATE TABLE trajectories (
    traj_id         VARCHAR PRIMARY KEY,
    task_id         VARCHAR NOT NULL REFERENCES tasks (task_id),
    run_id          VARCHAR,                        -- NULL for expert data, shared by every run
    source          VARCHAR NOT NULL CHECK (source IN ('expert', 'policy')),
    expert          VARCHAR,                        -- expert name when source = 'expert'
    model_id        VARCHAR,                        -- policy model/adapter when source = 'policy'
    iteration       INTEGER NOT NULL CHECK (iteration >= 0),
    purpose         VARCHAR NOT NULL CHECK (purpose IN ('expert', 'explore', 'simulate', 'eval')),
    branch_traj_id  VARCHAR,                        -- expert trajectory whose prefix was replayed
    branch_step     INTEGER NOT NULL DEFAULT 0 CHECK (branch_step >= 0),
    reward          DOUBLE NOT NULL CHECK (reward >= 0 AND reward <= 1),
    success         BOOLEAN NOT NULL,
    n_steps         INTEGER NOT NULL CHECK (n_steps >= 0),
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    meta            JSON,                           -- sampling settings, token counts, cost, drift
    content_hash    VARCHAR,                        -- of task, origin, reward and steps: makes re-imports idempotent
    CHECK (success = (reward = 1)),
    CHECK ((source = 'expert') = (purpose = 'expert')),
    CHECK (source = 'policy' OR (run_id IS NULL AND iteration = 0)),
    CHECK (source = 'expert' OR run_id IS NOT NULL),
    -- a simulation replays k >= 1 expert actions; every other trajectory starts from s0
    CHECK ((purpose = 'simulate') = (branch_step > 0)),
    CHECK ((branch_step > 0) = (branch_traj_id IS NOT NULL)),
    CHECK (branch_step <= n_steps)
);

-- as in 0001, plus: a reward, when there is one, is a finite number
CREATE TABLE steps (
    traj_id      VARCHAR NOT NULL REFERENCES trajectories (traj_id),
    step         INTEGER NOT NULL CHECK (step >= 0),
    thought      VARCHAR,
    action       VARCHAR NOT NULL,
    observation  VARCHAR NOT NULL,
    reward       DOUBLE CHECK (reward IS NULL OR isfinite(reward)),
    PRIMARY KEY (traj_id, step)
);

INSERT INTO trajectories SELECT * FROM trajectories_0002;
INSERT INTO steps SELECT * FROM steps_0002;
DROP TABLE trajectories_0002;
DROP TABLE steps_0002;
