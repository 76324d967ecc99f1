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

# WebShop (`--env webshop`): its first 5 train goals and 3 dev goals, ETO's step limit (10), room
# for a results page in each chat, and search queries in the generated actions
BY_ENV = {"webshop": dict(
    task_names=[], max_steps=None, max_new_tokens=48, workers=2,
    train=dict(epochs=3, batch_size=4, micro_batch=2, max_length=3072, learning_rate=5e-4),
)}
