"""What eef writes for people and other programs: output files, JSON and terminal text.

- `output_file`: a file is written under a temporary name next to it and renamed into place only
  when complete; it never replaces the store it was read from (by any path, link or case), nor
  an existing file unless `force`; a directory or a missing folder is a one-line error; nothing is
  left behind when writing fails.
- `json_text`: strict JSON (RFC 8259): non-finite floats (NaN, ±Infinity), which Python's json
  writes as bare tokens no other parser accepts, become null.
- `terminal_text`: stored text (model output above all) shown on a terminal with its control
  characters made visible, so a reply cannot move the cursor, recolour or retitle the terminal.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from eef_tasks.errors import UserError


class OutputError(UserError):
    """An output path cannot be written as asked; the message says why and what to do."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def check_output_path(path: Path, *, force: bool = False, protected: tuple[Path, ...] = ()) -> None:
    """Refuse an output path that is a folder, lies in a missing folder, is one of `protected`
    (the store and its write-ahead log), or exists already without `force`."""
    for keep in protected:
        if _same_file(path, keep):
            raise OutputError(f"{path} is the store {keep} itself: refusing to write over it; "
                              "choose another output file")
    if path.is_dir():
        raise OutputError(f"{path} is a folder: give a file name, e.g. {path / 'trajectories.jsonl'}")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"the folder {parent} does not exist: create it first")
    if path.exists() and not force:
        raise OutputError(f"{path} exists already: choose another name or pass --force to replace it")


@contextmanager
def output_file(path: Path, *, force: bool = False, protected: tuple[Path, ...] = ()) -> Iterator[TextIO]:
    """A text handle whose content replaces `path` only when the block ends without an error."""
    path = Path(path)
    check_output_path(path, force=force, protected=protected)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".partial", delete=False
    )
    tmp = Path(handle.name)
    try:
        with handle:
            yield handle
        # checked again: the store may have appeared under this name while we wrote
        check_output_path(path, force=force, protected=protected)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def finite(value: Any) -> Any:
    """`value` with every non-finite float (in nested dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def json_text(value: Any, **kwargs: Any) -> str:
    """`value` as strict JSON; what json cannot encode natively (dates, decimals) as text."""
    return json.dumps(finite(value), allow_nan=False, default=str, **kwargs)


# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides/isolates
# that reorder what a reader sees ("Trojan source")
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_text(text: str) -> str:
    """`text` with terminal control characters written as escapes (ESC as \\x1b)."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
