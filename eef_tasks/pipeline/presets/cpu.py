"""issue 11's CPU experiment (README, results/cpu): EEF vs RFT vs RFT×k on find-non-living-thing, 2 iterations, 3 seeds.

    eef experiment --preset cpu --db data/cpu.duckdb --name cpu --seeds 0,1,2

runs, per seed s, cpu-eef-s<s>, cpu-rft-s<s> and cpu-rftk-s<s> (k computed before the runs so that
RFT×k's explore episodes per iteration match EEF's explore + simulate episodes: one per training
task plus one per checkpoint of the failed expert trajectories, view expert_checkpoints), the
three sharing seed s's behaviour-cloning adapter, then writes results/cpu/ (eef_tasks/experiment.py).

find-non-living-thing with the synthetic expert's wrong_turn failures and the demo's training
setting, the one measured to make EEF's mechanism fire (docs/policy-probe.md: 32+ optimizer steps at
lr 2e-3, batch 2, dropout 0), on twice the demo's training tasks; every iteration's adapter is
evaluated on the family's dev split (6 tasks: they choose the iteration) and on its test split (10
tasks, eval_limit: they report it, report_split). Sized from the demo's measured cost (~14 min for
BC + one EEF and one RFT iteration on 8 tasks at load ~5) to stay near 2 hours for 3 seeds; measured
from a clean clone of 66c84e9 on a quiet 2-core machine: 1 h 38 min with the install, EEF − RFT +6.7
points [−20, +30]: no difference shown (stop 22, under load: 2 h 18 min, −20 points [−53.3, 0]).

The paper's other rows beside them, per seed, on the same store (NAME-<extra>-s<seed>, resuming the
runs above): README, "The paper's table, measured":

    eef experiment --preset cpu --db data/cpu.duckdb --name cpu --seeds 0 \\
        --extra sft-all,nat,eef-binary,eto,eef+dpo
"""

SETTINGS = dict(
    iterations=2, n_sims=4,
    task_names=["find-non-living-thing"],
    train_limit=16, eval_limit=10, report_split="test",
    # max_length 1536: its first run stopped at cpu-rftk-s1's iteration-1 training, an 11-action explore
    # success whose chat needs 1,029 tokens with no context left to drop (max_length 1024 then)
    train=dict(epochs=4, batch_size=2, micro_batch=2, max_length=1536, learning_rate=2e-3,
               lora_dropout=0.0, gradient_checkpointing=False),
    # eto, eef+dpo: DPO's defaults (1 epoch, lr 5e-6) take one optimizer step of a LoRA on a few pairs here
    dpo=dict(epochs=3, batch_size=8, micro_batch=4, max_length=1024, learning_rate=1e-4),
    explore_temperature=0.7, top_p=0.95,
    max_new_tokens=24, max_steps=12, workers=4,
)
EXPERT = dict(seeds=[0, 1], failure_modes=["wrong_turn"])
