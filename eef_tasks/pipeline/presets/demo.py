"""the README's main command: EEF vs RFT on ScienceWorld's find-non-living-thing, 1 iteration, under 15 minutes on a 2-core CPU.

    eef run --preset demo --db data/demo.duckdb

Chosen by measurement (benchmarks/policy_probe.py, docs/policy-probe.md): a behaviour-cloned
SmolLM2-135M finishes this family from the checkpoints near the end of an expert trajectory (in
the right room: look around, focus, move) and rarely from the early ones (the route through the
house), and the synthetic expert's `wrong_turn` failures (it walks out of the room it has just
entered, comes back, and gives up one action before the end) leave a checkpoint the policy cannot
recover from between two it can: a need-recover state, whose example teaches the way back.
M = 10 puts a checkpoint on every step of these short trajectories.
"""

SETTINGS = dict(
    iterations=1, n_sims=10,
    task_names=["find-non-living-thing"],
    train_limit=16, eval_limit=8,
    train=dict(epochs=3, batch_size=8, micro_batch=4, max_length=1024, learning_rate=1e-3, lora_dropout=0.0),
    explore_temperature=0.7, top_p=0.95,
    max_new_tokens=24, max_steps=12, workers=4,
)
# the synthetic expert's failures after which it plays on (eef_tasks/experts/synthetic.py)
EXPERT = dict(seeds=[0, 1], failure_modes=["wrong_turn"])
