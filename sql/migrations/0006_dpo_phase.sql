-- 0006_dpo_phase: run_phases takes the phase 'dpo': a run of method 'eef+dpo' continues each
-- iteration's SFT adapter with DPO on the preference pairs of its important states, and a run of
-- method 'eto' trains each iteration with DPO on (expert success, explored failure) pairs; the dpo
-- phase's adapter is then the iteration's policy (README, "ETO and EEF + DPO").
-- runs.method has no CHECK (0004), and neither method writes training_examples rows of its own
-- (eef+dpo's SFT set is method 'eef'; eto has no SFT set after iteration 0), so only run_phases changes.
-- DuckDB cannot change a CHECK, so run_phases is rebuilt (no other table references it).
-- Forward-only: never edit this file once released; add a new numbered migration instead.

CREATE TEMP TABLE run_phases_0005 AS SELECT * FROM run_phases;
DROP TABLE run_phases;

-- as in 0002, plus the dpo phase
CREATE TABLE run_phases (
    run_id       VARCHAR NOT NULL,
    iteration    INTEGER NOT NULL CHECK (iteration >= 0),
    phase        VARCHAR NOT NULL CHECK (phase IN ('explore', 'simulate', 'select', 'train', 'dpo', 'evaluate')),
    started_at   TIMESTAMP,
    finished_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    summary      JSON,                               -- counts, adapter path, timings
    PRIMARY KEY (run_id, iteration, phase)
);

INSERT INTO run_phases SELECT * FROM run_phases_0005;
DROP TABLE run_phases_0005;
