"""Benchmarks: the gateway against a direct connection to ``codex exec-server``, in one run.

``python -m bench.run`` (see ``bench/run.py`` and ``docs/performance.md``). Nothing here is
imported by the gateway; it drives real ``manage.py serve`` processes and the real executor with
the end-to-end harness (``tests/e2e/harness.py``).
"""
