"""WebShop's product search: BM25 over each product's text, built as WebShop builds its index.

WebShop (`search_engine/convert_product_file_format.py` + pyserini/Lucene) indexes, per product,
    lower(title + " " + description + " " + first feature + " " + "name: v1, v2, and name: ...")
with Anserini's default English analyzer (Lucene's StandardTokenizer, English possessive filter,
lowercase, Lucene's 33 English stop words, Porter stemmer) and ranks with Lucene's BM25
(k1 = 0.9, b = 0.4), returning the top 50 documents that match at least one query term, ties in
index order. eef does the same with `bm25s` (its "lucene" scoring variant, which is Lucene's
formula) on tokens from `analyze`, a regex rendering of the StandardTokenizer's word-break rules
for Latin text.

Known differences from Lucene (measured in benchmarks/README.md): Lucene stores document lengths
in a lossy one-byte encoding, eef uses exact lengths; `analyze` approximates UAX#29 word breaks
(letters joined by . ' : and digits joined by . , ; ' stay one token; hyphens, slashes and other
punctuation split). WebShop's debugging queries ('<r>' random products, '<a>', '<c>', '<q>'
filters) are searched as plain text.

One `ProductSearch` per process (`product_search()`) is shared read-only by every env.
"""

from __future__ import annotations

import re
from functools import cache

import bm25s
import numpy as np
import Stemmer

from eef_tasks.envs.webshop.products import Product, load_webshop

SEARCH_RETURN_N = 50  # WebShop's SEARCH_RETURN_N
BM25_K1 = 0.9  # pyserini's LuceneSearcher defaults
BM25_B = 0.4

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET (Anserini's default English analyzer uses it)
LUCENE_STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then "
    "there these they this to was will with".split()
)

_LETTER = r"[^\W\d_]"
_TOKEN_RE = re.compile(
    rf"\w+(?:(?:(?<={_LETTER})[.'’:](?={_LETTER})|(?<=\d)[.,;'’](?=\d))\w+)*"
)
_STEMMER = Stemmer.Stemmer("porter")  # the original Porter algorithm, as Lucene's PorterStemFilter


def analyze(text: str) -> list[str]:
    """Lucene-style analysis: word tokens, possessive 's dropped, lowercased, stop words removed,
    Porter-stemmed."""
    tokens = []
    for token in _TOKEN_RE.findall(text.lower()):
        if token.endswith(("'s", "’s")):
            token = token[:-2]
        if token and token not in LUCENE_STOP_WORDS:
            tokens.append(token)
    return _STEMMER.stemWords(tokens)


def document_text(product: Product) -> str:
    """The text WebShop indexes for a product (`convert_product_file_format.py`)."""
    option_text = ", and ".join(
        f"{name}: {', '.join(values)}" for name, values in product.options.items()
    )
    first_feature = product.bullet_points[0] if product.bullet_points else ""
    return " ".join([product.title, product.description, first_feature, option_text]).lower()


class ProductSearch:
    """BM25 over a fixed list of products; `search` returns them best first."""

    def __init__(self, products: tuple[Product, ...]) -> None:
        self.products = products
        self._bm25 = bm25s.BM25(method="lucene", k1=BM25_K1, b=BM25_B)
        self._bm25.index([analyze(document_text(p)) for p in products], show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        tokens = [t for t in analyze(query) if t]
        if not tokens:
            return np.zeros(len(self.products), dtype=np.float32)
        return np.asarray(self._bm25.get_scores(tokens))

    def search(self, query: str, k: int = SEARCH_RETURN_N) -> list[Product]:
        """The top-k products matching at least one query term; ties in index order (Lucene's)."""
        scores = self.scores(query)
        hits = np.flatnonzero(scores > 0)
        order = hits[np.lexsort((hits, -scores[hits]))][:k]
        return [self.products[i] for i in order]


@cache
def product_search() -> ProductSearch:
    """The process-wide search engine over the shipped products."""
    return ProductSearch(load_webshop().products)
