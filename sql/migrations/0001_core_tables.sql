-- 0001_core_tables: the public tables of ../shared/CONTRACT.md, plus the runs registry.
-- Forward-only: never edit this file once released; add a new numbered migration instead.

-- One row per task: an environment instance with a goal.
CREATE TABLE tasks (
    task_id      VARCHAR PRIMARY KEY,               -- e.g. 'scienceworld/boil/12'
    env          VARCHAR NOT NULL,                  -- 'scienceworld', 'webshop', ...
    split        VARCHAR NOT NULL CHECK (split IN ('train', 'dev', 'test')),
    instruction  VARCHAR NOT NULL,                  -- the goal text the agent sees
    max_steps    INTEGER CHECK (max_steps > 0),     -- environment step limit, when known
    meta         JSON
);

-- One row per pipeline run (experiment). n_sims is M of METHOD.md: it fixes the checkpoints
-- of failed expert trajectories and so which states can be need-recover states.
CREATE TABLE runs (
    run_id       VARCHAR PRIMARY KEY,
    n_sims       INTEGER NOT NULL CHECK (n_sims >= 0),
    created_at   TIMESTAMP NOT NULL DEFAULT current_timestamp,
    config       JSON
);

-- One row per trajectory: expert, rollout, simulation or evaluation.
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
    -- a simulation replays k >= 1 expert actions; every other trajectory starts from s0
    CHECK ((purpose = 'simulate') = (branch_step > 0)),
    CHECK ((branch_step > 0) = (branch_traj_id IS NOT NULL)),
    CHECK (branch_step <= n_steps)
);

-- One row per action: step k is action a_k taken in state s_k.
CREATE TABLE steps (
    traj_id      VARCHAR NOT NULL REFERENCES trajectories (traj_id),
    step         INTEGER NOT NULL CHECK (step >= 0),
    thought      VARCHAR,
    action       VARCHAR NOT NULL,
    observation  VARCHAR NOT NULL,
    reward       DOUBLE,
    PRIMARY KEY (traj_id, step)
);

-- The data set chosen for one run, iteration and method: one row per important state.
-- Only `eef select` writes it (delete + insert of one run/iteration/method in one transaction);
-- its query yields one row per state by construction (tested, including property-based tests).
-- No primary or foreign key on purpose: maintaining them cost more than the selection itself
-- (see benchmarks/README.md).
CREATE TABLE training_examples (
    run_id          VARCHAR NOT NULL,
    iteration       INTEGER NOT NULL CHECK (iteration >= 0),
    method          VARCHAR NOT NULL CHECK (method IN ('bc', 'eef', 'rft')),
    traj_id         VARCHAR NOT NULL,
    loss_from_step  INTEGER NOT NULL CHECK (loss_from_step >= 0),
    state_kind      VARCHAR NOT NULL CHECK (state_kind IN ('initial', 'need_recover', 'expert_success')),
    state_traj_id   VARCHAR,
    state_step      INTEGER NOT NULL CHECK (state_step >= 0),
    task_id         VARCHAR NOT NULL,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    CHECK ((state_kind = 'need_recover') = (state_traj_id IS NOT NULL)),
    CHECK (loss_from_step = state_step)
);
