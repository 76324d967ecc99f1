-- example_counts: size of each selected training set by kind of state.
-- Grain: one row per (run_id, iteration, method, state_kind).
-- Inputs: training_examples, trajectories.
CREATE OR REPLACE VIEW example_counts AS
SELECT
    e.run_id,
    e.iteration,
    e.method,
    e.state_kind,
    count(*) AS n_examples,
    count(DISTINCT e.task_id) AS n_tasks,
    sum(t.n_steps - e.loss_from_step)::BIGINT AS n_supervised_actions,
    sum(e.loss_from_step)::BIGINT AS n_context_actions
FROM training_examples AS e
JOIN trajectories AS t ON t.traj_id = e.traj_id
GROUP BY ALL;
