-- 0007_run_experts: a run may learn from some of the store's experts only: runs.experts lists their
-- names (trajectories.expert), NULL = every expert (as before). With it one store compares expert
-- sources, e.g. EEF on the expensive expert's data against EEF on the cheap and the expensive
-- expert's (README, "Expert cost"). Every view that reads expert trajectories for a run applies
-- it through the macro uses_expert (sql/views/05_run_experts.sql).
-- Forward-only: never edit this file once released; add a new numbered migration instead.

ALTER TABLE runs ADD COLUMN experts VARCHAR[];
