"""METHOD.md's setting (I = 4, M = 5, 6 epochs, lr 5e-5, batch 64), all training tasks, test split: a GPU job.

    eef run --preset paper --db data/eef.duckdb --set base_model=/path/to/Llama-3-8B-Instruct
"""

SETTINGS = dict(iterations=4, n_sims=5, samples=1, eval_split="test", workers=16)
