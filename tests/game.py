"""Can the real ScienceWorld run here? The tests that play the game skip cleanly when it cannot
(it needs the `scienceworld` package and a Java runtime); every other failure stays an error."""

from __future__ import annotations

import pytest

from eef_tasks.envs.base import EnvError

try:
    import scienceworld  # noqa: F401

    from eef_tasks.envs.scienceworld import find_java

    find_java()
    HAVE_JAVA = True
except (ImportError, EnvError):  # no package, or JavaNotFound
    HAVE_JAVA = False

needs_java = pytest.mark.skipif(
    not HAVE_JAVA, reason="ScienceWorld needs Java and `pip install scienceworld==1.2.3`"
)
