-- run_comparison: how runs (methods x iterations) compare: what each iteration trained on, what it
-- spent, and how its adapter did on held-out tasks. Read by `eef compare` and eef_tasks/report.py.
-- Grain: one row per (run_id, iteration) that has policy trajectories or training_examples;
--        iteration 0 (behaviour cloning) has a row when the run has bc examples or an iteration-0
--        evaluation (its own, or the one it borrows: eval_outcomes).
-- Inputs: runs, tasks, trajectories, training_examples, need_recover_states, win_rates (explore),
--         eval_outcomes, run_phases (dpo).
-- Columns:
--   method            the run's method, runs.method (written when the run is registered or first
--                     selects an eef/rft set; NULL for a run that is not in runs)
--   train_method      the method of the iteration's training set: 'bc' at iteration 0 (a sft-all or
--                     nat run: its own method, trained once on expert data), else method (an eef+dpo
--                     run: 'eef', the set its SFT adapter learns; an eto run: 'eto', no SFT set)
--   n_examples, n_initial, n_need_recover, n_expert_success
--                     that training set's size and its rows by state_kind (0 when not selected)
--   n_expert_failure  its expert_failure rows (sft-all, nat; added after the others, as is search)
--   search            runs.search: 'uniform' (M checkpoints) or 'binary' (bisection; M = 0)
--   n_dpo_pairs       preference pairs the iteration's dpo phase trained on (eef+dpo, eto; run_phases
--                     summary n_pairs: 0 when it had none and kept its starting adapter); NULL when
--                     the iteration has no finished dpo phase
--   n_need_recover_found   distinct need-recover states (expert_traj_id, step) found in
--                     iterations <= this one (METHOD.md step 2.4: important states accumulate)
--   n_simulations     purpose = 'simulate' trajectories of this iteration (from expert states)
--   n_explore         purpose = 'explore' trajectories of this iteration (from s0), any split
--   explore_win_rate  win rate (view win_rates: per task) of this iteration's explore rollouts on
--                     train tasks
--   dev_* / test_*    evaluation (purpose = 'eval') of this iteration's adapter on dev / test tasks:
--                     n_*_tasks tasks, win_rate and mean_reward, from the view eval_outcomes (per
--                     task: a task's samples are averaged first, then tasks; as win_rates, whose
--                     numbers they are). An iteration 0 that reused another run's behaviour-cloning
--                     adapter (bc_adapter) shows that adapter's evaluation by the run that trained
--                     it (eval_outcomes.evaluated_by), so an RFT run can be chosen at iteration 0.
--   eval_split, n_eval_tasks, n_eval_trajectories, win_rate, mean_reward
--                     the headline evaluation: dev when the iteration was evaluated on dev (the
--                     split the reported model is chosen on, METHOD.md step 2.8), else test; NULL
--                     when the iteration has no eval trajectories.
CREATE OR REPLACE VIEW run_comparison AS
WITH run_iterations AS (
    SELECT DISTINCT run_id, iteration
    FROM trajectories
    WHERE source = 'policy'
      AND run_id IS NOT NULL
    UNION
    SELECT DISTINCT run_id, iteration
    FROM training_examples
    UNION
    SELECT DISTINCT run_id, iteration  -- a reused BC adapter's borrowed evaluation
    FROM eval_outcomes
),

run_methods AS (
    SELECT
        run.run_id,
        runs.n_sims,
        runs.method,
        runs.search
    FROM (SELECT DISTINCT run_id FROM run_iterations) AS run
    LEFT JOIN runs ON runs.run_id = run.run_id
),

iterations AS (
    SELECT
        i.run_id,
        i.iteration,
        m.method,
        m.n_sims,
        m.search,
        CASE
            WHEN i.iteration > 0 AND m.method = 'eef+dpo' THEN 'eef'
            WHEN i.iteration > 0 THEN m.method
            WHEN m.method IN ('sft-all', 'nat') THEN m.method
            ELSE 'bc'
        END AS train_method
    FROM run_iterations AS i
    JOIN run_methods AS m ON m.run_id = i.run_id
),

examples AS (
    -- the iteration's own training set (bc at iteration 0), by kind of important state
    SELECT
        i.run_id,
        i.iteration,
        count(*) AS n_examples,
        count(*) FILTER (WHERE e.state_kind = 'initial') AS n_initial,
        count(*) FILTER (WHERE e.state_kind = 'need_recover') AS n_need_recover,
        count(*) FILTER (WHERE e.state_kind = 'expert_success') AS n_expert_success,
        count(*) FILTER (WHERE e.state_kind = 'expert_failure') AS n_expert_failure
    FROM iterations AS i
    JOIN training_examples AS e
        ON  e.run_id = i.run_id
        AND e.iteration = i.iteration
        AND e.method = i.train_method
    GROUP BY i.run_id, i.iteration
),

need_recover_first_found AS (
    SELECT run_id, expert_traj_id, step, min(iteration) AS found_in
    FROM need_recover_states
    GROUP BY run_id, expert_traj_id, step
),

need_recover_found AS (
    SELECT i.run_id, i.iteration, count(*) AS n_need_recover_found
    FROM iterations AS i
    JOIN need_recover_first_found AS f
        ON  f.run_id = i.run_id
        AND f.found_in <= i.iteration
    GROUP BY i.run_id, i.iteration
),

rollouts AS (
    SELECT
        traj.run_id,
        traj.iteration,
        count(*) FILTER (WHERE traj.purpose = 'simulate') AS n_simulations,
        count(*) FILTER (WHERE traj.purpose = 'explore') AS n_explore
    FROM trajectories AS traj
    WHERE traj.source = 'policy'
      AND traj.purpose IN ('explore', 'simulate')
    GROUP BY traj.run_id, traj.iteration
),

explore_wins AS (
    SELECT
        run_id,
        iteration,
        sum(win_rate * n_tasks) / sum(n_tasks) AS explore_win_rate
    FROM win_rates
    WHERE purpose = 'explore'
      AND split = 'train'
      AND run_id IS NOT NULL
    GROUP BY run_id, iteration
),

eval_by_split AS (
    -- per task first (eval_outcomes), so an iteration 0 that reused another run's BC adapter shows
    -- that adapter's one evaluation
    SELECT
        run_id,
        iteration,
        split,
        count(*)::BIGINT AS n_tasks,
        sum(n_trajectories)::BIGINT AS n_trajectories,
        avg(win_rate) AS win_rate,
        avg(mean_reward) AS mean_reward
    FROM eval_outcomes
    WHERE split IN ('dev', 'test')
    GROUP BY run_id, iteration, split
),

dpo_phases AS (
    SELECT run_id, iteration, (summary ->> '$.n_pairs')::BIGINT AS n_dpo_pairs
    FROM run_phases
    WHERE phase = 'dpo'
),

headline_eval AS (
    -- dev when evaluated on dev, else test
    SELECT *
    FROM eval_by_split
    QUALIFY row_number() OVER (PARTITION BY run_id, iteration ORDER BY split) = 1
)

SELECT
    i.run_id,
    i.iteration,
    i.method,
    i.n_sims,
    i.train_method,
    h.split AS eval_split,
    h.n_tasks AS n_eval_tasks,
    h.n_trajectories AS n_eval_trajectories,
    h.win_rate,
    h.mean_reward,
    coalesce(x.n_examples, 0) AS n_examples,
    coalesce(x.n_initial, 0) AS n_initial,
    coalesce(x.n_need_recover, 0) AS n_need_recover,
    coalesce(x.n_expert_success, 0) AS n_expert_success,
    coalesce(f.n_need_recover_found, 0) AS n_need_recover_found,
    coalesce(r.n_simulations, 0) AS n_simulations,
    coalesce(r.n_explore, 0) AS n_explore,
    w.explore_win_rate,
    dev.n_tasks AS n_dev_tasks,
    dev.win_rate AS dev_win_rate,
    dev.mean_reward AS dev_mean_reward,
    test.n_tasks AS n_test_tasks,
    test.win_rate AS test_win_rate,
    test.mean_reward AS test_mean_reward,
    coalesce(x.n_expert_failure, 0) AS n_expert_failure,
    i.search,
    d.n_dpo_pairs
FROM iterations AS i
LEFT JOIN examples AS x ON x.run_id = i.run_id AND x.iteration = i.iteration
LEFT JOIN need_recover_found AS f ON f.run_id = i.run_id AND f.iteration = i.iteration
LEFT JOIN rollouts AS r ON r.run_id = i.run_id AND r.iteration = i.iteration
LEFT JOIN explore_wins AS w ON w.run_id = i.run_id AND w.iteration = i.iteration
LEFT JOIN headline_eval AS h ON h.run_id = i.run_id AND h.iteration = i.iteration
LEFT JOIN dpo_phases AS d ON d.run_id = i.run_id AND d.iteration = i.iteration
LEFT JOIN eval_by_split AS dev
    ON dev.run_id = i.run_id AND dev.iteration = i.iteration AND dev.split = 'dev'
LEFT JOIN eval_by_split AS test
    ON test.run_id = i.run_id AND test.iteration = i.iteration AND test.split = 'test';
