"""The hf engine's top-p nucleus (`eef_tasks.engines.hf.nucleus`): worked examples and a property
test against the definition, including the fallback when the top-k candidates hold too little mass."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from eef_tasks.engines.hf import nucleus  # noqa: E402


def test_worked_examples() -> None:
    p = torch.tensor([[0.1, 0.5, 0.15, 0.25]], dtype=torch.float64)
    # 0.5 alone is < 0.6; 0.5 + 0.25 reaches it: tokens 1 and 3
    assert nucleus(p, 0.6).tolist() == [[0.0, 0.5, 0.0, 0.25]]
    # exactly reaching top_p stops there: 0.5 + 0.25 = 0.75
    assert nucleus(p, 0.75).tolist() == [[0.0, 0.5, 0.0, 0.25]]
    # the most likely token is always kept
    assert nucleus(p, 0.01).tolist() == [[0.0, 0.5, 0.0, 0.0]]
    # ties at the edge are all kept (the order of tied tokens decides nothing)
    tied = torch.tensor([[0.4, 0.3, 0.3]], dtype=torch.float64)
    assert nucleus(tied, 0.5).tolist() == [[0.4, 0.3, 0.3]]
    # k = 1 holds 0.5 < 0.9 of the mass: the whole-vocabulary fallback gives the same answer
    assert nucleus(p, 0.9, k=1).tolist() == nucleus(p, 0.9, k=4).tolist() == [[0.0, 0.5, 0.15, 0.25]]


def _reference(row: list[float], top_p: float) -> list[bool]:
    order = sorted(range(len(row)), key=lambda i: -row[i])
    mass, last = 0.0, None
    for i in order:
        last = row[i]
        mass += row[i]
        if mass >= top_p:
            break
    return [x >= last for x in row]


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(st.lists(st.integers(0, 50), min_size=6, max_size=6), min_size=1, max_size=4),
    top_p=st.floats(0.05, 0.99),
    k=st.integers(1, 6),
)
def test_the_nucleus_is_the_smallest_top_set_reaching_top_p(weights, top_p, k) -> None:
    rows = [[w + 1 for w in r] for r in weights]  # strictly positive, with ties
    probs = torch.tensor(rows, dtype=torch.float64)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    out = nucleus(probs, top_p, k=k)
    for r in range(len(rows)):
        kept = (out[r] > 0).tolist()
        assert kept == _reference(probs[r].tolist(), top_p)
        assert out[r][out[r] > 0].tolist() == probs[r][out[r] > 0].tolist()  # kept tokens keep their mass
        assert float(out[r].sum()) >= top_p - 1e-12
