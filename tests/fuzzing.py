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
