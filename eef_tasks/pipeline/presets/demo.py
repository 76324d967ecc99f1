"""the README's main command: EEF vs RFT on find-non-living-thing (8 train, 6 dev tasks), 1 iteration, ~14 minutes on a 2-core CPU.

    eef run --preset demo --db data/demo.duckdb

Chosen by measurement (docs/policy-probe.md): on this family a behaviour-cloned SmolLM2 (32 optimizer
steps: batch 2, lr 2e-3, LoRA dropout 0; here 8 epochs of the expert's 8 successes) wins 4 of the 6 dev tasks greedily and succeeds
from some checkpoints of the synthetic expert's `wrong_turn` failures and not from others, which is
what makes need-recover states (success from c_(m-1), failure from c_m) and their examples (a later
checkpoint's success) appear within one iteration. M = 4 keeps the simulations to ~32.
"""

SETTINGS = dict(
    iterations=1, n_sims=4,
    task_names=["find-non-living-thing"],
    train_limit=8, eval_limit=6,
    # 2 x ~650-token micro-batches fit in ~2 GB without activation checkpointing (its extra forward
    # costs ~25 % of a step)
    train=dict(epochs=8, batch_size=2, micro_batch=2, max_length=1024, learning_rate=2e-3,
               lora_dropout=0.0, gradient_checkpointing=False),
    explore_temperature=0.7, top_p=0.95,
    max_new_tokens=24, max_steps=12, workers=4,
)
# the synthetic expert's two seeds per task, failing only in the way after which it plays on
EXPERT = dict(seeds=[0, 1], failure_modes=["wrong_turn"])

# WebShop (`--env webshop`): its first 5 train goals and 3 dev goals, 2 iterations, ETO's step
# limit (10), room for a results page in each chat, and search queries in the generated actions
BY_ENV = {"webshop": dict(
    iterations=2, n_sims=2, task_names=[], train_limit=5, eval_limit=3, max_steps=None, max_new_tokens=48, workers=2,
    explore_temperature=1.0, top_p=1.0,
    train=dict(epochs=3, batch_size=4, micro_batch=2, max_length=3072, learning_rate=5e-4),
)}
