-- uses_expert(run_experts, expert): whether a run whose runs.experts is `run_experts` learns from
-- trajectories of `expert` (NULL run_experts: every expert). The one home of that rule; every view and
-- selection file that reads expert trajectories for a run calls it.
-- Grain: a scalar macro. Inputs: runs.experts, trajectories.expert.
CREATE OR REPLACE MACRO uses_expert(run_experts, expert) AS
    run_experts IS NULL OR list_contains(run_experts, expert);
