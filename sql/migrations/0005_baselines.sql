-- 0005_baselines: the paper's offline baselines and the binary-search option of EEF.
--  * training_examples takes the methods 'sft-all' (every expert trajectory, failures included) and
--    'nat' (negative-aware training: the same trajectories, each with a marker in its prompt), the
--    state kind 'expert_failure', and the column prompt_tag: the marker a 'nat' example is trained
--    with ('positive' for a success, 'negative' for a failure; NULL for every other method).
--  * runs.search: how a run picks the expert states it simulates from: 'uniform' (METHOD.md step
--    2.2, M evenly spaced checkpoints) or 'binary' (bisection over the steps; README, "Binary search").
-- DuckDB cannot change a CHECK, so training_examples is rebuilt (no other table references it).
-- Forward-only: never edit this file once released; add a new numbered migration instead.

CREATE TEMP TABLE training_examples_0004 AS SELECT * FROM training_examples;
DROP TABLE training_examples;

-- as in 0001, plus: the sft-all and nat methods, the expert_failure state kind, prompt_tag
CREATE TABLE training_examples (
    run_id          VARCHAR NOT NULL,
    iteration       INTEGER NOT NULL CHECK (iteration >= 0),
    method          VARCHAR NOT NULL CHECK (method IN ('bc', 'eef', 'rft', 'sft-all', 'nat')),
    traj_id         VARCHAR NOT NULL,
    loss_from_step  INTEGER NOT NULL CHECK (loss_from_step >= 0),
    state_kind      VARCHAR NOT NULL
                    CHECK (state_kind IN ('initial', 'need_recover', 'expert_success', 'expert_failure')),
    state_traj_id   VARCHAR,
    state_step      INTEGER NOT NULL CHECK (state_step >= 0),
    task_id         VARCHAR NOT NULL,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    prompt_tag      VARCHAR CHECK (prompt_tag IN ('positive', 'negative')),
    CHECK ((state_kind = 'need_recover') = (state_traj_id IS NOT NULL)),
    CHECK (loss_from_step = state_step),
    CHECK ((method = 'nat') = (prompt_tag IS NOT NULL)),
    CHECK (state_kind <> 'expert_failure' OR method IN ('sft-all', 'nat'))
);

INSERT INTO training_examples
    (run_id, iteration, method, traj_id, loss_from_step, state_kind, state_traj_id, state_step, task_id,
     created_at)
SELECT run_id, iteration, method, traj_id, loss_from_step, state_kind, state_traj_id, state_step, task_id,
       created_at
FROM training_examples_0004;
DROP TABLE training_examples_0004;

ALTER TABLE runs ADD COLUMN search VARCHAR DEFAULT 'uniform';
UPDATE runs SET search = 'uniform' WHERE search IS NULL;
