"""``python -m bench.soak_merge A.json B.json …``: one table (per scenario and ``--busy`` setting)
over the runs of several ``python -m bench.soak --json`` files, as in docs/reliability.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.soak_report import RunResult, StreamFigures, lossy_details, markdown, summarize


def run_of(data: dict[str, Any]) -> RunResult:
    streams = []
    for stream in data["streams"]:
        fields = dict(stream)
        for name in ("missing_lines", "seq_gaps", "seqs_seen"):
            fields[name] = [tuple(pair) for pair in fields[name]]
        streams.append(StreamFigures(**fields))
    return RunResult(
        scenario=data["scenario"],
        index=data["index"],
        busy=data["busy"],
        seconds=data["seconds"],
        streams=streams,
        notes=data["notes"],
        error=data["error"],
        logs=data["logs"],
    )


def main(argv: list[str] | None = None) -> int:
    paths = [Path(arg) for arg in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print(__doc__)
        return 2
    results = [run_of(run) for path in paths for run in json.loads(path.read_text())["runs"]]
    print(markdown(summarize(results)))
    details = lossy_details(results)
    if details:
        print("\nLossy or failed runs:\n\n" + details)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
