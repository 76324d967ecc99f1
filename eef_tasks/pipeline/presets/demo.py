"""the README's main command: EEF vs RFT on find-non-living-thing (16 train, 6 dev tasks), 1 iteration of the cpu experiment's setting.

    eef run --preset demo --db data/demo.duckdb

Chosen by measurement (docs/policy-probe.md, README): the `cpu` preset's data and training setting,
one iteration, evaluated on the dev split only. The synthetic expert's two seeds on 16 training
variations of find-non-living-thing give 16 successes to clone (16 different tasks: the house maps
differ, so the policy sees 16 routes) and 16 `wrong_turn` failures, M = 4 (64 checkpoints); BC is 32
optimizer steps (batch 2, 4 epochs, lr 2e-3, LoRA dropout 0). In the cpu experiment's first run
(stop 21) this iteration took both of its seeds' EEF dev win rates to 83.3 % (5 / 6) from BC's 0 and
16.7 %, with 9 need-recover states found per seed. The preset before this one (8 tasks, the gold
expert's successes beside the synthetic expert's, 16 BC examples over 8 routes, M = 8) found 11
need-recover states in its one run, but its BC adapter won 0 / 6 dev tasks, and so did EEF and RFT
after the iteration: the policy had learnt the last three actions, not the way through the house.
"""

from eef_tasks.pipeline.presets.cpu import SETTINGS as CPU

SETTINGS = {**{k: v for k, v in CPU.items() if k != "report_split"}, "iterations": 1, "eval_limit": 6}
# the cpu preset's expert recipe (synthetic only, seeds 0 and 1, wrong_turn only)
EXPERT = dict(seeds=[0, 1], failure_modes=["wrong_turn"])

# WebShop (`--env webshop`): its first 5 train goals and 3 dev goals, 2 iterations, ETO's step
# limit (10), room for a results page in each chat, and search queries in the generated actions
BY_ENV = {"webshop": dict(
    iterations=2, n_sims=2, task_names=[], train_limit=5, eval_limit=3, max_steps=None, max_new_tokens=48, workers=2,
    explore_temperature=1.0, top_p=1.0,
    train=dict(epochs=3, batch_size=4, micro_batch=2, max_length=3072, learning_rate=5e-4),
)}
