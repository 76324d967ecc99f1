-- 0002_run_phases: what each run has finished, and an identity for the store file.
-- Forward-only: never edit this file once released; add a new numbered migration instead.

-- One row per finished phase of a run's iteration (explore, simulate, select, train, evaluate).
-- The pipeline writes a row only after the phase's work is stored, so a resumed run skips
-- exactly the phases listed here and redoes (idempotently) the one it was killed in.
CREATE TABLE run_phases (
    run_id       VARCHAR NOT NULL,
    iteration    INTEGER NOT NULL CHECK (iteration >= 0),
    phase        VARCHAR NOT NULL CHECK (phase IN ('explore', 'simulate', 'select', 'train', 'evaluate')),
    started_at   TIMESTAMP,
    finished_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    summary      JSON,                               -- counts, adapter path, timings
    PRIMARY KEY (run_id, iteration, phase)
);

-- Key/value facts about this store file. 'store_id' is a random id made when the file is created:
-- Prefect's task cache keys include it, so a recreated store never hits another file's cache.
CREATE TABLE store_info (
    key    VARCHAR PRIMARY KEY,
    value  VARCHAR NOT NULL
);
INSERT INTO store_info VALUES ('store_id', uuid()::VARCHAR);
