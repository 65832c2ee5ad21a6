"""Shared settings of the fuzz corpus (``tests/**/test_fuzz_*.py``, issue 17).

Every fuzz test runs with a fixed seed (``derandomize=True``: the same examples on every run and
machine), a bounded number of examples, no deadline (a loaded CI machine must not turn a slow
example into a failure) and no example database (nothing is written under ``.hypothesis``).
Failing inputs found once are kept as explicit ``@example``s next to the test that found them.

Each example counts itself under its input kind (``count(kind)``); ``run(kind, test, minimum)``
runs a ``@given`` function, checks that at least ``minimum`` examples of that kind really ran
and, when ``CODEXGW_FUZZ_REPORT`` names a file, appends ``{"kind", "test", "examples"}`` to it as
one JSON line (the figures of ``docs/reliability.md``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

COUNTS: Counter[str] = Counter()


def fuzz(examples: int) -> Any:
    """``@settings`` of a fuzz test: fixed seed, ``examples`` examples, no deadline."""
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        print_blob=False,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
    )


def count(kind: str) -> None:
    COUNTS[kind] += 1


def run(kind: str, test: Callable[[], None], minimum: int) -> int:
    """Run the ``@given`` function ``test``; the number of examples of ``kind`` it ran."""
    before = COUNTS[kind]
    test()
    ran = COUNTS[kind] - before
    assert ran >= minimum, f"{kind}: only {ran} examples ran (expected at least {minimum})"
    report = os.environ.get("CODEXGW_FUZZ_REPORT")
    if report:
        with open(report, "a", encoding="utf-8") as out:
            out.write(json.dumps({"kind": kind, "test": getattr(test, "__name__", "?"), "examples": ran}) + "\n")
    return ran


# --- strategies the REST corpora share -----------------------------------------------------------


def latin1(max_size: int) -> st.SearchStrategy[str]:
    """Header values: HTTP carries latin-1."""
    return st.text(st.characters(codec="latin-1"), max_size=max_size)


# A path segment: anything but what would end or escape it.
path_params = st.text(
    st.characters(codec="utf-8", exclude_characters="/?#%", exclude_categories=["Cs"]), min_size=1, max_size=30
)


def scalars(huge_from: int, huge_to: int) -> st.SearchStrategy[Any]:
    """Any JSON scalar, with integers far beyond 64 bits (``huge_from`` to ``huge_to``)."""
    return (
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=huge_from, max_value=huge_to)
        | st.floats()
        | st.text(max_size=30)
    )


def json_values(huge_from: int, huge_to: int) -> st.SearchStrategy[Any]:
    """Any JSON value built from ``scalars``."""
    return st.recursive(
        scalars(huge_from, huge_to),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=10,
    )
