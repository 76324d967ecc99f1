-- 0004_runs_method: a run's method ('eef' | 'rft') is a column of runs, written when the run is
-- registered (the pipeline) or first selects an eef/rft training set (`eef select`); views read
-- it instead of guessing it.
-- Forward-only: never edit this file once released; add a new numbered migration instead.

ALTER TABLE runs ADD COLUMN method VARCHAR;

-- Old stores: the method as the views used to infer it, once: runs.config's "method" (top level,
-- or under "config" as the pipeline registers runs), else the one non-bc method of the run's
-- training_examples, else from M (0 -> 'rft', otherwise 'eef').
UPDATE runs
SET method = coalesce(
    lower(runs.config ->> '$.method'),
    lower(runs.config ->> '$.config.method'),
    (
        SELECT CASE WHEN count(DISTINCT example.method) = 1 THEN min(example.method) END
        FROM training_examples AS example
        WHERE example.run_id = runs.run_id
          AND example.method <> 'bc'
    ),
    CASE WHEN runs.n_sims = 0 THEN 'rft' WHEN runs.n_sims > 0 THEN 'eef' END
);
