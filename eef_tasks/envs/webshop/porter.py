"""The Porter stemmer as Lucene's `PorterStemFilter` runs it (WebShop's index uses it).

Lucene's PorterStemmer is Martin Porter's own C release of the algorithm, which departs from the
1980 paper (and from Snowball's "porter", e.g. PyStemmer's) in three ways that change WebShop's
tokens: words of one or two letters are left alone ("us", "xs"), step 2 rewrites "bli" to "ble"
(not only "abli"), and it adds "logi" -> "log" ("technology" -> "technolog"). Written here from
the algorithm's description (Porter, 1980, and the departures listed in his C release), checked
token for token against Lucene's analyzer on WebShop's product texts (tests/test_webshop.py).
"""

from __future__ import annotations

_VOWELS = frozenset("aeiou")


class _Word:
    """One word being stemmed: `b` its letters, `k` the last index kept, `j` a suffix boundary."""

    def __init__(self, word: str) -> None:
        self.b = list(word)
        self.k = len(word) - 1
        self.j = 0

    def cons(self, i: int) -> bool:
        ch = self.b[i]
        if ch in _VOWELS:
            return False
        if ch == "y":
            return True if i == 0 else not self.cons(i - 1)
        return True

    def m(self) -> int:
        """The number of vowel-consonant sequences in b[0..j]."""
        n, i, j = 0, 0, self.j
        while True:
            if i > j:
                return n
            if not self.cons(i):
                break
            i += 1
        i += 1
        while True:
            while True:
                if i > j:
                    return n
                if self.cons(i):
                    break
                i += 1
            i += 1
            n += 1
            while True:
                if i > j:
                    return n
                if not self.cons(i):
                    break
                i += 1
            i += 1

    def vowel_in_stem(self) -> bool:
        return any(not self.cons(i) for i in range(self.j + 1))

    def double_c(self, j: int) -> bool:
        return j >= 1 and self.b[j] == self.b[j - 1] and self.cons(j)

    def cvc(self, i: int) -> bool:
        if i < 2 or not self.cons(i) or self.cons(i - 1) or not self.cons(i - 2):
            return False
        return self.b[i] not in "wxy"

    def ends(self, s: str) -> bool:
        n = len(s)
        start = self.k - n + 1
        if start < 0 or "".join(self.b[start:self.k + 1]) != s:
            return False
        self.j = self.k - n
        return True

    def set_to(self, s: str) -> None:
        start = self.j + 1
        self.b[start:self.k + 1] = list(s)
        self.k = self.j + len(s)

    def r(self, s: str) -> None:
        if self.m() > 0:
            self.set_to(s)

    def rules(self, pairs: tuple[tuple[str, str], ...]) -> None:
        """Apply the first rule whose suffix matches (if the stem's measure allows)."""
        for suffix, replacement in pairs:
            if self.ends(suffix):
                self.r(replacement)
                return


_STEP2 = {
    "a": (("ational", "ate"), ("tional", "tion")),
    "c": (("enci", "ence"), ("anci", "ance")),
    "e": (("izer", "ize"),),
    "l": (("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous")),
    "o": (("ization", "ize"), ("ation", "ate"), ("ator", "ate")),
    "s": (("alism", "al"), ("iveness", "ive"), ("fulness", "ful"), ("ousness", "ous")),
    "t": (("aliti", "al"), ("iviti", "ive"), ("biliti", "ble")),
    "g": (("logi", "log"),),
}
_STEP3 = {
    "e": (("icate", "ic"), ("ative", ""), ("alize", "al")),
    "i": (("iciti", "ic"),),
    "l": (("ical", "ic"), ("ful", "")),
    "s": (("ness", ""),),
}
_STEP4 = {
    "a": ("al",), "c": ("ance", "ence"), "e": ("er",), "i": ("ic",), "l": ("able", "ible"),
    "n": ("ant", "ement", "ment", "ent"), "o": ("ion", "ou"), "s": ("ism",), "t": ("ate", "iti"),
    "u": ("ous",), "v": ("ive",), "z": ("ize",),
}


def _step1(w: _Word) -> None:
    b = w.b
    if b[w.k] == "s":
        if w.ends("sses"):
            w.k -= 2
        elif w.ends("ies"):
            w.set_to("i")
        elif b[w.k - 1] != "s":
            w.k -= 1
    if w.ends("eed"):
        if w.m() > 0:
            w.k -= 1
    elif (w.ends("ed") or w.ends("ing")) and w.vowel_in_stem():
        w.k = w.j
        if w.ends("at"):
            w.set_to("ate")
        elif w.ends("bl"):
            w.set_to("ble")
        elif w.ends("iz"):
            w.set_to("ize")
        elif w.double_c(w.k):
            ch = b[w.k]
            w.k -= 1
            if ch in "lsz":
                w.k += 1
        elif w.m() == 1 and w.cvc(w.k):
            w.set_to("e")


def _step4(w: _Word) -> None:
    if w.k == 0:
        return
    for suffix in _STEP4.get(w.b[w.k - 1], ()):
        if w.ends(suffix):
            if suffix == "ion" and not (w.j >= 0 and w.b[w.j] in "st"):
                continue
            break
    else:
        return
    if w.m() > 1:
        w.k = w.j


def _step5(w: _Word) -> None:
    w.j = w.k
    if w.b[w.k] == "e":
        a = w.m()
        if a > 1 or (a == 1 and not w.cvc(w.k - 1)):
            w.k -= 1
    if w.b[w.k] == "l" and w.double_c(w.k) and w.m() > 1:
        w.k -= 1


def stem(word: str) -> str:
    """`word` (lowercase) stemmed as Lucene's PorterStemFilter does."""
    if len(word) <= 2:
        return word
    w = _Word(word)
    _step1(w)
    if w.ends("y") and w.vowel_in_stem():
        w.b[w.k] = "i"
    if w.k != 0:
        w.rules(_STEP2.get(w.b[w.k - 1], ()))
    w.rules(_STEP3.get(w.b[w.k], ()))
    _step4(w)
    _step5(w)
    return "".join(w.b[: w.k + 1])
