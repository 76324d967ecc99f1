"""issue 11's CPU experiment (a definition, not yet run or timed): EEF vs RFT vs RFT×k on find-non-living-thing, 3 iterations, per seed.

    for seed in 0 1 2; do
      eef run --preset cpu --db data/cpu.duckdb --name cpu-s$seed --set seed=$seed --rft-samples 1
      eef run --preset cpu --db data/cpu.duckdb --name cpu-k-s$seed --set seed=$seed --rft-samples 4 --expert none
    done

find-non-living-thing with the synthetic expert's wrong_turn failures (docs/policy-probe.md), at a size that can say something: 40
training variations, the whole dev split of the family (10 tasks) for choosing the iteration.
RFT×k's k = 4 gives it about the rollouts EEF spends per iteration (one per training task plus the
simulations from every checkpoint of the failed expert trajectories: see the `budget` view).
The paper's whole table from one invocation (README, "The paper's table in one command"):

    eef run --preset cpu --db data/cpu.duckdb --name cpu --expert synthetic,synthetic-cheap \
        --extra sft-all,nat,eef-binary,eto,eef+dpo,rft-x4

Not there yet (see issue 11): evaluation on a second split (dev to choose the iteration, test to
report), bootstrap intervals on the win-rate difference, and budget columns in `eef compare`.
"""

SETTINGS = dict(
    iterations=3, n_sims=10,
    task_names=["find-non-living-thing"],
    train_limit=40, eval_limit=10,
    train=dict(epochs=3, batch_size=8, micro_batch=4, max_length=1024, learning_rate=1e-3, lora_dropout=0.0),
    # eto, eef+dpo: DPO's defaults (1 epoch, lr 5e-6) take one optimizer step of a LoRA on a few pairs here
    dpo=dict(epochs=3, batch_size=8, micro_batch=4, max_length=1024, learning_rate=1e-4),
    explore_temperature=0.7, top_p=0.95,
    max_new_tokens=24, max_steps=12, workers=4,
)
EXPERT = dict(seeds=[0, 1], failure_modes=["wrong_turn"])
