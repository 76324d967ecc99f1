-- example_cost: the expert data a training set uses, and what it cost per training example.
-- Grain: one row per (run_id, iteration, method) with training_examples.
-- Inputs: training_examples, trajectories (the examples' trajectories; expert trajectories with
--         meta.cost_usd, as in expert_cost).
-- Rule (ours): an example uses an expert trajectory when its trajectory is one (bc, sft-all, nat, an
-- expert success chosen by eef), when its trajectory replays that one's prefix (a simulation:
-- branch_traj_id), or when its state is one of that trajectory's (a need-recover state:
-- state_traj_id). Each expert trajectory counts once per training set, however many examples use it.
-- Columns:
--   n_examples                 the training set's size
--   n_with_expert_actions      examples that use an expert trajectory (the rest are the policy's own
--                              rollouts from s0)
--   n_expert_trajectories      distinct expert trajectories used; n_costed of them with a cost
--   expert_cost_usd            their summed meta.cost_usd (NULL when none is costed)
--   cost_per_example           expert_cost_usd / n_examples
CREATE OR REPLACE VIEW example_cost AS
WITH examples AS (
    SELECT e.run_id, e.iteration, e.method, e.traj_id, e.state_kind, e.state_traj_id, e.state_step,
           t.source, t.branch_traj_id
    FROM training_examples AS e
    JOIN trajectories AS t ON t.traj_id = e.traj_id
),

uses AS (
    -- (training set, example: its trajectory and state, expert trajectory it uses)
    SELECT run_id, iteration, method, traj_id, state_kind, state_traj_id, state_step, traj_id AS expert_traj_id
    FROM examples WHERE source = 'expert'
    UNION
    SELECT run_id, iteration, method, traj_id, state_kind, state_traj_id, state_step, branch_traj_id
    FROM examples WHERE branch_traj_id IS NOT NULL
    UNION
    SELECT run_id, iteration, method, traj_id, state_kind, state_traj_id, state_step, state_traj_id
    FROM examples WHERE state_traj_id IS NOT NULL
),

used_trajectories AS (
    SELECT DISTINCT u.run_id, u.iteration, u.method, u.expert_traj_id,
           (t.meta ->> '$.cost_usd')::DOUBLE AS cost_usd
    FROM uses AS u
    JOIN trajectories AS t ON t.traj_id = u.expert_traj_id
),

sets AS (
    SELECT run_id, iteration, method, count(*) AS n_examples
    FROM training_examples
    GROUP BY run_id, iteration, method
),

with_expert AS (
    SELECT run_id, iteration, method,
           count(DISTINCT (traj_id, state_kind, state_traj_id, state_step)) AS n_with_expert_actions
    FROM uses
    GROUP BY run_id, iteration, method
),

spend AS (
    SELECT run_id, iteration, method, count(*) AS n_expert_trajectories, count(cost_usd) AS n_costed,
           sum(cost_usd) AS expert_cost_usd
    FROM used_trajectories
    GROUP BY run_id, iteration, method
)

SELECT
    s.run_id,
    s.iteration,
    s.method,
    s.n_examples,
    coalesce(w.n_with_expert_actions, 0) AS n_with_expert_actions,
    coalesce(p.n_expert_trajectories, 0) AS n_expert_trajectories,
    coalesce(p.n_costed, 0) AS n_costed,
    p.expert_cost_usd,
    p.expert_cost_usd / s.n_examples AS cost_per_example
FROM sets AS s
LEFT JOIN with_expert AS w USING (run_id, iteration, method)
LEFT JOIN spend AS p USING (run_id, iteration, method);
