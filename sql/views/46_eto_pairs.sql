-- eto_pairs: ETO's preference pairs (Song et al. 2024, "Trial and Error: Exploration-Based Trajectory
-- Optimization for LLM Agents"): the policy explores from s0 of a training task; a failed exploration
-- is the rejected trajectory, the expert's successful trajectory of the same task the chosen one.
-- An eto run trains iteration i with DPO on the pairs of its iteration-i explore rollouts (made by the
-- policy of iteration i - 1), starting from, and referenced to, that policy.
-- Grain: one row per (run_id, iteration, rejected_traj_id): every failed explore rollout of a run
--        that has at least one action, on a train-split task with an expert success of >= 1 action.
-- Inputs: trajectories (the run's explore rollouts; expert successes of the run's experts:
--         runs.experts, uses_expert), tasks (split).
-- Rule (ETO; ties ours): rejected = the failed rollout (reward < 1 <= the expert's); chosen = the
-- task's expert success with the fewest steps, then the smaller traj_id. Several failed rollouts of
-- one task (RFT×k-style samples) each make a pair with the same chosen. Columns as preference_pairs
-- (the state is s0: state_kind 'initial', state_step 0), so one code path turns both into TRL records.
CREATE OR REPLACE VIEW eto_pairs AS
WITH train_tasks AS (
    SELECT task_id
    FROM tasks
    WHERE split = 'train'
),

expert_successes AS (
    SELECT traj.task_id, traj.traj_id, traj.n_steps, traj.expert
    FROM trajectories AS traj
    JOIN train_tasks USING (task_id)
    WHERE traj.source = 'expert'
      AND traj.success
      AND traj.n_steps > 0
),

failed_explorations AS (
    SELECT traj.run_id, traj.iteration, traj.task_id, traj.traj_id, runs.experts
    FROM trajectories AS traj
    JOIN train_tasks USING (task_id)
    LEFT JOIN runs USING (run_id)  -- a run without a row learns from every expert
    WHERE traj.source = 'policy'
      AND traj.purpose = 'explore'
      AND NOT traj.success
      AND traj.n_steps > 0
)

SELECT
    failed.run_id,
    failed.iteration,
    'eto' AS method,
    'initial' AS state_kind,
    failed.task_id,
    NULL::VARCHAR AS state_traj_id,
    0 AS state_step,
    arg_min(chosen.traj_id, (chosen.n_steps, chosen.traj_id)) AS chosen_traj_id,
    failed.traj_id AS rejected_traj_id
FROM failed_explorations AS failed
JOIN expert_successes AS chosen
    ON  chosen.task_id = failed.task_id
    AND uses_expert(failed.experts, chosen.expert)
GROUP BY failed.run_id, failed.iteration, failed.task_id, failed.traj_id;
