"""``python -m bench.soak``: repeat executor-reconnect, gateway-SIGKILL and SIGTERM-drain runs with
a real ``codex exec-server`` and real gateway processes (PostgreSQL + Redis on 127.0.0.1, in a
database and Redis prefix of its own, dropped at the end), optionally under CPU contention, and
account for every line of output each client was owed (see docs/reliability.md).

Bounded in count (``--scenarios reconnect=200,kill=50``) and in time (``--minutes``, ``--until``):
the time left is shared among the scenarios still to run, and a run is not started unless the
longest run so far still fits. Loopback only. Exit status 1 if any run lost output or failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.environment import bench_environment
from bench.report import machine
from bench.soak_report import RunResult, Stream, StreamFigures, lossy_details, markdown, summarize

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("reconnect", "kill", "drain")
MAX_ERRORS_IN_A_ROW = 3


@dataclass
class Options:
    counts: dict[str, int]
    lines: int
    interval: float
    cut_within: float
    busy: int
    deadline: float  # time.monotonic()
    seed: int
    logs: Path
    json_path: Path | None
    output: Path | None


def parse(argv: list[str] | None) -> Options:
    summary = (__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=summary)
    parser.add_argument(
        "--scenarios",
        default="reconnect=20,kill=5,drain=5",
        help="comma-separated scenario=runs, run in this order (scenarios: reconnect, kill, drain)",
    )
    parser.add_argument("--lines", type=int, default=200, help="lines each ticker prints (default 200)")
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between lines (default 0.005)")
    parser.add_argument("--cut-within", type=float, default=0.4, help="break at most this long after the first line")
    parser.add_argument("--busy", type=int, default=0, help="busy-loop processes competing for the CPUs meanwhile")
    parser.add_argument("--minutes", type=float, default=30.0, help="bound of the whole soak (default 30)")
    parser.add_argument("--until", default=None, metavar="HH:MM", help="also end by this UTC time (today)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the break delays (default: time)")
    parser.add_argument("--logs", type=Path, default=None, help="logs of lossy or failed runs (var/soak/<time>)")
    parser.add_argument("--json", type=Path, default=None, dest="json_path", help="also write every run as JSON here")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    counts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in args.scenarios.split(","))):
        name, _, runs = item.partition("=")
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r} (one of {', '.join(SCENARIOS)})")
        counts[name] = int(runs or 1)
    deadline = time.monotonic() + args.minutes * 60
    if args.until:
        now = datetime.now(UTC)
        hour, minute = (int(part) for part in args.until.split(":"))
        until = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if until <= now:
            parser.error(f"--until {args.until} UTC has passed")
        deadline = min(deadline, time.monotonic() + (until - now) / timedelta(seconds=1))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return Options(
        counts=counts,
        lines=args.lines,
        interval=args.interval,
        cut_within=args.cut_within,
        busy=args.busy,
        deadline=deadline,
        seed=args.seed if args.seed is not None else int(time.time()),
        logs=args.logs or REPO / "var" / "soak" / stamp,
        json_path=args.json_path,
        output=args.output,
    )


@contextlib.contextmanager
def busy_loops(count: int) -> Iterator[list[int]]:
    """``count`` busy-looping Python processes, killed (by their own pid) on the way out."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield [loop.pid for loop in loops]
    finally:
        for loop in loops:
            loop.kill()
        for loop in loops:
            loop.wait(10)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


RunFn = Callable[[int, list[Stream], dict[str, Any]], Coroutine[Any, Any, None]]


def scenario(name: str, options: Options, work: Path, deadline: float, results: list[RunResult]) -> None:
    """Set up the scenario's rig, run it until its count or ``deadline``, tear it down."""
    from bench import soak_rigs, soak_runs
    from bench.run import codex_bin

    shape = soak_runs.Shape(options.lines, options.interval, options.cut_within)
    rng = random.Random(f"{options.seed}-{name}")  # noqa: S311 - break delays, not secrets
    binary = codex_bin()
    rig: soak_rigs.CutRig | soak_rigs.FleetRig
    run: RunFn
    if name == "reconnect":
        cut_rig = rig = soak_rigs.CutRig.start(binary, work)

        def run(index: int, streams: list[Stream], notes: dict[str, Any]) -> Coroutine[Any, Any, None]:
            return soak_runs.reconnect_run(cut_rig, index, shape, rng, streams, notes)

    else:
        fleet = rig = soak_rigs.FleetRig.start(binary, work, name)

        def run(index: int, streams: list[Stream], notes: dict[str, Any]) -> Coroutine[Any, Any, None]:
            return soak_runs.failover_run(fleet, index, shape, rng, streams, notes, name)

    longest = 5.0
    errors_in_a_row = 0
    try:
        for index in range(1, options.counts[name] + 1):
            if time.monotonic() + longest * 1.5 > deadline:
                say(f"{name}: time is up after {index - 1} runs")
                break
            marks = rig.marks()
            streams: list[Stream] = []
            notes: dict[str, Any] = {}
            error = None
            started = time.monotonic()
            try:
                asyncio.run(asyncio.wait_for(run(index, streams, notes), shape.run_timeout + 60))
            except Exception as failure:
                error = f"{type(failure).__name__}: {failure}"[:2000]
            seconds = time.monotonic() - started
            longest = max(longest, seconds)
            result = RunResult(name, index, options.busy, seconds, [StreamFigures.of(s) for s in streams], notes, error)
            if result.lossy or error is not None:
                where = options.logs / f"{name}-{index:03d}"
                rig.save_logs(where, marks)
                (where / "run.json").write_text(json.dumps(result.to_json(), indent=1))
                result.logs = str(where)
            results.append(result)
            received = result.total("lines_received")
            say(
                f"{name} #{index}: {received}/{result.total('lines_expected')} lines, "
                f"{result.total('duplicate_events')} repeats, {seconds:.1f} s"
                + (" LOSSY" if result.lossy else "")
                + (f" ERROR {error}" if error else "")
            )
            errors_in_a_row = errors_in_a_row + 1 if error else 0
            if errors_in_a_row >= MAX_ERRORS_IN_A_ROW:
                say(f"{name}: {errors_in_a_row} failed runs in a row, giving up on this scenario")
                break
    finally:
        rig.stop()


def render(results: list[RunResult], options: Options, command: str, started: datetime, elapsed: float) -> str:
    parts = [
        f"Soak {started:%Y-%m-%d %H:%M} UTC on {machine()}; {elapsed / 60:.1f} min; "
        f"{options.busy} busy loops; ticker {options.lines} lines, {options.interval} s apart; seed {options.seed}.",
        f"Command: `{command}`",
        markdown(summarize(results)) if results else "No runs.",
    ]
    details = lossy_details(results)
    if details:
        parts.append("Lossy or failed runs:\n\n" + details)
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    command = "python -m bench.soak " + " ".join(sys.argv[1:] if argv is None else argv)
    started_at = datetime.now(UTC)
    started = time.monotonic()
    results: list[RunResult] = []
    failed: list[str] = []
    with (
        bench_environment(),
        tempfile.TemporaryDirectory(prefix="codexgw-soak-") as work,
        busy_loops(options.busy),
    ):
        names = list(options.counts)
        for position, name in enumerate(names):
            share = (options.deadline - time.monotonic()) / (len(names) - position)
            if share < 10:
                say(f"{name}: no time left")
                continue
            try:
                scenario(name, options, Path(work), time.monotonic() + share, results)
            except Exception as failure:  # a rig that did not start: the other scenarios still run
                say(f"{name}: could not run: {type(failure).__name__}: {failure}")
                failed.append(name)
    text = render(results, options, command.strip(), started_at, time.monotonic() - started)
    print(text)
    if options.output is not None:
        options.output.write_text(text)
    if options.json_path is not None:
        payload = {
            "started": started_at.isoformat(),
            "machine": machine(),
            "command": command.strip(),
            "busy": options.busy,
            "lines": options.lines,
            "interval": options.interval,
            "seed": options.seed,
            "summary": [asdict(summary) for summary in summarize(results)],
            "runs": [result.to_json() for result in results],
        }
        options.json_path.write_text(json.dumps(payload, indent=1))
    if failed:
        print(f"Scenarios that could not run: {', '.join(failed)}")
    return 1 if failed or any(r.lossy or r.error is not None for r in results) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
