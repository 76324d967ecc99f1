"""the README's main command: EEF vs RFT on find-non-living-thing (8 train, 6 dev tasks), 1 iteration, 10-24 minutes on a 2-core CPU.

    eef run --preset demo --db data/demo.duckdb

Chosen by measurement (docs/policy-probe.md): on this family a SmolLM2 behaviour-cloned on 16 expert
successes (the gold expert's and the synthetic expert's, 32 optimizer steps: batch 2, 4 epochs,
lr 2e-3, LoRA dropout 0) won 4 of the 6 dev tasks greedily in the probe and succeeded from some
checkpoints of the synthetic expert's `wrong_turn` failures and not from others: success from s2-s3,
failure from the states around the wrong turn (s4, s5), success again from s6 on. That is what makes
need-recover states (success from c_(m-1), failure from c_m) and their examples (a later checkpoint's
success) appear within one iteration. M = 8 puts a checkpoint on every step up to s8 of those 8-10-action
failures (l = 1); with M = 4 (l = 2 for 10 actions) half of those states are skipped, and one clean-clone
`make demo` with M = 4 and the synthetic expert's data alone (BC 0 / 6 dev) found no need-recover state.
In its one run with this preset (README, Quick start) the BC adapter also won 0 / 6 dev tasks, not the
probe's 4 / 6: 11 need-recover states and 7 examples, every win rate 0 %.
"""

SETTINGS = dict(
    iterations=1, n_sims=8,
    task_names=["find-non-living-thing"],
    train_limit=8, eval_limit=6,
    # 2 x ~650-token micro-batches fit in ~2 GB without activation checkpointing (its extra forward
    # costs ~25 % of a step)
    train=dict(epochs=4, batch_size=2, micro_batch=2, max_length=1024, learning_rate=2e-3,
               lora_dropout=0.0, gradient_checkpointing=False),
    explore_temperature=0.7, top_p=0.95,
    max_new_tokens=24, max_steps=12, workers=4,
)
# the gold expert's one success per task beside the synthetic expert's two seeds per task, the
# latter failing only in the way after which it plays on (16 BC examples: 8 per epoch at batch 2)
EXPERT = dict(experts=["synthetic", "gold"], seeds=[0, 1], failure_modes=["wrong_turn"])

# WebShop (`--env webshop`): its first 5 train goals and 3 dev goals, 2 iterations, ETO's step
# limit (10), room for a results page in each chat, and search queries in the generated actions
BY_ENV = {"webshop": dict(
    iterations=2, n_sims=2, task_names=[], train_limit=5, eval_limit=3, max_steps=None, max_new_tokens=48, workers=2,
    explore_temperature=1.0, top_p=1.0,
    train=dict(epochs=3, batch_size=4, micro_batch=2, max_length=3072, learning_rate=5e-4),
)}
