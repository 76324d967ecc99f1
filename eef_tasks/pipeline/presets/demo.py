"""the README's main command: EEF vs RFT on ScienceWorld's find-non-living-thing, 1 iteration (meant for 15 minutes on a 2-core CPU; not yet timed on a quiet machine).

    eef run --preset demo --db data/demo.duckdb

Why this family and expert (docs/policy-probe.md): its gold paths are a walk through the house
followed by three local actions in the box's room (look around, focus, move), so a weak policy
can finish from the late checkpoints of an expert trajectory and not from the early ones; the
synthetic expert's `wrong_turn` failures (it walks out of the room it has just entered, comes
back, and gives up one action before the end) put a checkpoint the policy may not recover from
between two it can: a need-recover state, whose example teaches the way back. M = 10 puts a
checkpoint on every step of these short trajectories. Measured so far (docs/policy-probe.md):
with these training settings the behaviour-cloned policy is under-trained (16 examples, 6
optimizer steps) and repeats `open door to …`; more optimizer steps are the next thing to try.
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
