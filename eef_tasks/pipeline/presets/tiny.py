"""the whole method in a few minutes on CPU (tests): one task family, 2 train and 1 eval task, 1 iteration.

    eef run --preset tiny --db data/tiny.duckdb
"""

SETTINGS = dict(
    iterations=1, n_sims=1, task_names=["lifespan-longest-lived"], train_limit=2, eval_limit=1,
    train=dict(epochs=1, batch_size=4, micro_batch=4, max_length=1024, learning_rate=5e-4),
    max_new_tokens=24, max_steps=4, workers=2,
)

# WebShop (`--env webshop`): the first 2 train goals (the synthetic expert succeeds once and fails
# three times there, so BC has an example and EEF checkpoints to simulate from), 1 dev goal; its
# chats are longer (a results page is ~10 titles) and one in-process shop needs one worker
BY_ENV = {"webshop": dict(
    task_names=[], max_steps=4, workers=1,
    train=dict(epochs=1, batch_size=4, micro_batch=4, max_length=2048, learning_rate=5e-4),
)}
