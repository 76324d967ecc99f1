"""issue 11's CPU experiment (a definition, not yet run or timed): EEF vs RFT vs RFT×k on find-non-living-thing, 3 iterations, 3 seeds.

    eef experiment --preset cpu --db data/cpu.duckdb --name cpu --seeds 0,1,2

runs, per seed s, cpu-eef-s<s>, cpu-rft-s<s> and cpu-rftk-s<s> (k computed before the runs so that
RFT×k's explore episodes per iteration match EEF's explore + simulate episodes: one per training
task plus one per checkpoint of the failed expert trajectories, view expert_checkpoints), the
three sharing seed s's behaviour-cloning adapter, then writes results/cpu/ (eef_tasks/experiment.py).

find-non-living-thing with the synthetic expert's wrong_turn failures (docs/policy-probe.md), at a size that can say something: 40
training variations; every iteration's adapter is evaluated on the family's dev split (6 tasks: they
choose the iteration) and on its test split (10 tasks, eval_limit: they report it, report_split).
"""

SETTINGS = dict(
    iterations=3, n_sims=10,
    task_names=["find-non-living-thing"],
    train_limit=40, eval_limit=10, report_split="test",
    train=dict(epochs=3, batch_size=8, micro_batch=4, max_length=1024, learning_rate=1e-3, lora_dropout=0.0),
    explore_temperature=0.7, top_p=0.95,
    max_new_tokens=24, max_steps=12, workers=4,
)
EXPERT = dict(seeds=[0, 1], failure_modes=["wrong_turn"])
