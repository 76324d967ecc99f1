"""WebShop's product search: BM25 over each product's text, built as WebShop builds its index.

WebShop (`search_engine/convert_product_file_format.py` + pyserini/Lucene) indexes, per product,
    lower(title + " " + description + " " + first feature + " " + "name: v1, v2, and name: ...")
with Anserini's default English analyzer (Lucene's StandardTokenizer, English possessive filter,
lowercase, Lucene's 33 English stop words, Porter stemmer) and ranks with Lucene's BM25
(k1 = 0.9, b = 0.4), returning the top 50 documents that match at least one query term, equal
scores ordered by document id (the asin; Anserini's tie-break). eef does the same in numpy (`ProductSearch`: Lucene 9's BM25 formula in float32,
document lengths as Lucene's one-byte norms store them) on tokens from `analyze`: a regex rendering
of the StandardTokenizer's word breaks for Latin text and pictographs, Lucene's stop words and
Lucene's Porter stemmer (`porter.py`). Neither `bm25s` nor `rank-bm25` is used: measured against
WebShop's own index, bm25s's "lucene" variant with Snowball's Porter stemmer gave the same top 10
(in order) for 40 % of the goal instructions, this implementation for most (benchmarks/README.md).

Known differences from Lucene: `analyze` approximates UAX#29 word breaks (letters joined by
. ' : and digits joined by . , ; ' stay one token; hyphens, slashes and other punctuation split;
scripts without spaces are not segmented) and the pictograph set. WebShop's debugging queries
('<r>' random products, '<a>', '<c>', '<q>' filters) are searched as plain text.

One `ProductSearch` per process (`product_search()`) is shared read-only by every env.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np

from eef_tasks.envs.webshop.porter import stem
from eef_tasks.envs.webshop.products import Product, load_webshop

SEARCH_RETURN_N = 50  # WebShop's SEARCH_RETURN_N
BM25_K1 = 0.9  # pyserini's LuceneSearcher defaults
BM25_B = 0.4

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET (Anserini's default English analyzer uses it)
LUCENE_STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then "
    "there these they this to was will with".split()
)

# UAX#29 word-break classes that Lucene's StandardTokenizer uses (the common ones)
_MID_LETTER = ":\u00b7\u0387\u05f4\u2027\ufe13\ufe55\uff1a"
_MID_NUM_LET = ".'\u2018\u2019\u2024\ufe52\uff07\uff0e"
_MID_NUM = ",;\u037e\u0589\u060c\u060d\u066c\u07f8\u2044\ufe10\ufe14\ufe50\ufe54\uff0c\uff1b"
_IDEOGRAPH = "\u3040-\u309f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # one token per character
_WORD = rf"[^\W{_IDEOGRAPH}]"
_LETTER = rf"[^\W\d_{_IDEOGRAPH}]"
# Extended_Pictographic (Unicode emoji-data; Python's re has no such property): Lucene keeps
# these as tokens, one per emoji sequence
_PICTOGRAPH = (
    "\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u2199\u21a9\u21aa\u231a\u231b\u2328\u2388"
    "\u23cf\u23e9-\u23f3\u23f8-\u23fa\u24c2\u25aa\u25ab\u25b6\u25c0\u25fb-\u25fe"
    "\u2600-\u2605\u2607-\u2612\u2614-\u2685\u2690-\u2705\u2708-\u2712\u2714\u2716\u271d"
    "\u2721\u2728\u2733\u2734\u2744\u2747\u274c\u274e\u2753-\u2755\u2757\u2763-\u2767"
    "\u2795-\u2797\u27a1\u27b0\u27bf\u2934\u2935\u2b05-\u2b07\u2b1b\u2b1c\u2b50\u2b55"
    "\u3030\u303d\u3297\u3299\U0001f000-\U0001f3fa\U0001f400-\U0001faff"
)
_TOKEN_RE = re.compile(
    rf"{_WORD}+(?:(?:(?<={_LETTER})[{_MID_LETTER}{_MID_NUM_LET}](?={_LETTER})"
    rf"|(?<=\d)[{_MID_NUM}{_MID_NUM_LET}](?=\d)){_WORD}+)*"
    rf"|[{_IDEOGRAPH}]"
    rf"|[{_PICTOGRAPH}][\ufe0f\U0001f3fb-\U0001f3ff]*(?:\u200d[{_PICTOGRAPH}][\ufe0f]*)*"
)


def analyze(text: str) -> list[str]:
    """Lucene-style analysis: word tokens, possessive 's dropped, lowercased, stop words removed,
    Porter-stemmed."""
    tokens = []
    for token in _TOKEN_RE.findall(text.lower()):
        if token.endswith(("'s", "’s")):
            token = token[:-2]
        if token.strip("_") and token not in LUCENE_STOP_WORDS:
            tokens.append(token)
    return [stem(t) for t in tokens]


def document_text(product: Product) -> str:
    """The text WebShop indexes for a product (`convert_product_file_format.py`)."""
    option_text = ", and ".join(
        f"{name}: {', '.join(values)}" for name, values in product.options.items()
    )
    first_feature = product.bullet_points[0] if product.bullet_points else ""
    return " ".join([product.title, product.description, first_feature, option_text]).lower()


def _long_to_int4(i: int) -> int:
    bits = i.bit_length()
    if bits < 4:
        return i
    shift = bits - 4
    return ((i >> shift) & 0x07) | ((shift + 1) << 3)


def _int4_to_long(i: int) -> int:
    bits, shift = i & 0x07, (i >> 3) - 1
    return bits if shift == -1 else (bits | 0x08) << shift


_FREE_NORMS = 255 - _long_to_int4(2**31 - 1)  # 24: lengths below are stored exactly


def lucene_length(length: int) -> int:
    """A document length as Lucene's norms keep it (SmallFloat.intToByte4, then byte4ToInt):
    exact below 24, then 4 significant bits."""
    if length < _FREE_NORMS:
        return length
    return _FREE_NORMS + _int4_to_long(_long_to_int4(length - _FREE_NORMS))


class ProductSearch:
    """Lucene's BM25 over a fixed list of products; `search` returns them best first.

    Scores follow Lucene 9's BM25Similarity in float32: per query term (its weight the term's
    idf times how often the query repeats it, as Anserini's bag-of-words query boosts it)
    `w - w / (1 + tf / (k1 * (1 - b + b * len / avglen)))`, with `len` the document length as
    Lucene's one-byte norm stores it, summed over terms in double precision.
    """

    def __init__(self, products: tuple[Product, ...]) -> None:
        self.products = products
        postings: dict[str, dict[int, int]] = {}
        lengths = []
        for doc, product in enumerate(products):
            tokens = analyze(document_text(product))
            lengths.append(len(tokens))
            for token in tokens:
                row = postings.setdefault(token, {})
                row[doc] = row.get(doc, 0) + 1
        n_docs = len(products)
        avg = np.float32(sum(lengths) / n_docs) if n_docs else np.float32(1)
        stored = np.array([lucene_length(n) for n in lengths], dtype=np.float32)
        k1, b = np.float32(BM25_K1), np.float32(BM25_B)
        self._norm_inverse = (np.float32(1) / (k1 * ((np.float32(1) - b) + b * stored / avg))).astype(np.float32)
        self._postings = {
            term: (np.fromiter(row.keys(), dtype=np.int64), np.fromiter(row.values(), dtype=np.float32))
            for term, row in postings.items()
        }
        self._id_rank = np.argsort(np.argsort([p.asin for p in products], kind="stable"))
        self._idf = {
            term: np.float32(np.log(1 + (n_docs - len(row) + 0.5) / (len(row) + 0.5)))
            for term, row in postings.items()
        }

    def scores(self, query: str) -> np.ndarray:
        """Every product's score for `query` (0 where no query term occurs)."""
        total = np.zeros(len(self.products), dtype=np.float64)
        counts: dict[str, int] = {}
        for token in analyze(query):
            counts[token] = counts.get(token, 0) + 1
        for term, count in counts.items():
            if term not in self._postings:
                continue
            docs, freqs = self._postings[term]
            weight = np.float32(count) * self._idf[term]
            part = weight - weight / (np.float32(1) + freqs * self._norm_inverse[docs])
            total[docs] += part.astype(np.float32)
        return total.astype(np.float32)

    def search(self, query: str, k: int = SEARCH_RETURN_N) -> list[Product]:
        """The top-k products matching at least one query term; equal scores ordered by asin
        (Anserini breaks score ties by the document id)."""
        scores = self.scores(query)
        hits = np.flatnonzero(scores > 0)
        order = hits[np.lexsort((self._id_rank[hits], -scores[hits]))][:k]
        return [self.products[i] for i in order]


@cache
def product_search() -> ProductSearch:
    """The process-wide search engine over the shipped products."""
    return ProductSearch(load_webshop().products)
