"""WebShop (Yao et al., 2022) for eef: its 1,000-product setting, offline, in WebShop's text mode.

- `products`: the shipped products, the 6,910 synthetic goals and 13 human goals, built by WebShop's rules.
- `search`: BM25 over product text as WebShop indexes it (Lucene's scoring, via bm25s).
- `reward`: WebShop's purchase reward (type, attribute, option and price matching).
- `env`: the `WebShop` environment (pages, clicks, Buy Now) behind eef's `Env` interface.
- `tasks`: task ids 'webshop/<goal index>' and 'webshop/human/<index>', WebShop's test/dev/train split, the step limit.

`build_data` rebuilds the shipped data (maintainers only; needs spaCy).
"""

from eef_tasks.envs.webshop.env import WebShop, parse_action
from eef_tasks.envs.webshop.tasks import (
    DATA_VERSION,
    ENV_NAME,
    MAX_STEPS,
    SPLIT_RANGES,
    catalog,
    find_task,
    goal_index,
    goal_of,
    task_id_of,
)

__all__ = [
    "DATA_VERSION", "ENV_NAME", "MAX_STEPS", "SPLIT_RANGES", "WebShop", "catalog", "find_task", "goal_index",
    "goal_of", "parse_action", "task_id_of",
]
