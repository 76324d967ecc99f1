"""the README's main command: EEF vs RFT on five ScienceWorld tasks, 2 iterations, under 15 minutes on a 2-core CPU.

    eef run --preset demo --db data/demo.duckdb
"""

SETTINGS = dict(
    iterations=2, n_sims=2,
    task_names=["lifespan-longest-lived", "lifespan-shortest-lived", "lifespan-longest-lived-then-shortest-lived"],
    train_limit=5, eval_limit=3,
    train=dict(epochs=3, batch_size=4, micro_batch=4, max_length=1024, learning_rate=5e-4),
    max_new_tokens=24, max_steps=7, workers=4,
)
