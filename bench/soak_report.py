"""The soak's accounting: what one client saw of one ticker process (``Stream``), what one run
saw (``RunResult``), and the per-scenario summary as a Markdown table and JSON."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.report import percentile

EVENTS = ("process/output", "process/exited", "process/closed")
LOST = "gateway/outputLost"


def ranges(numbers: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted inclusive ranges of ``numbers``: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    found: list[tuple[int, int]] = []
    for number in sorted(set(numbers)):
        if found and number == found[-1][1] + 1:
            found[-1] = (found[-1][0], number)
        else:
            found.append((number, number))
    return found


def ticker_script(prefix: str, lines: int, interval: float) -> str:
    return f"for i in $(seq 1 {lines}); do echo {prefix}-$i; sleep {interval}; done"


def expected_bytes(prefix: str, lines: int) -> int:
    return sum(len(f"{prefix}-{i}\n") for i in range(1, lines + 1))


class Stream:
    """One ticker process's events as one client sees them across connections, keyed by seq.
    A repeated seq (at-least-once across a crash) is counted, not stored twice; a repeat that
    differs from the first copy is counted as a conflict."""

    def __init__(self, process_id: str, lines: int) -> None:
        self.process_id = process_id
        self.lines = lines
        self.events: dict[int, dict[str, Any]] = {}
        self.repeats = 0
        self.conflicts = 0
        self.lost: list[dict[str, Any]] = []
        self.foreign = 0  # notifications for another process id (never expected)

    def add(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        params = message.get("params") or {}
        if params.get("processId") != self.process_id:
            self.foreign += 1
            return
        if method == LOST:
            self.lost.append(params)
            return
        if method not in EVENTS:
            return
        seq = int(params["seq"])
        if seq in self.events:
            self.repeats += 1
            self.conflicts += self.events[seq] != message
            return
        self.events[seq] = message

    @property
    def closed(self) -> bool:
        return any(event["method"] == "process/closed" for event in self.events.values())

    @property
    def exit_codes(self) -> list[int | None]:
        return [e["params"].get("exitCode") for e in self.events.values() if e["method"] == "process/exited"]

    def output(self) -> bytes:
        return b"".join(
            base64.b64decode(self.events[seq]["params"]["chunk"])
            for seq in sorted(self.events)
            if self.events[seq]["method"] == "process/output"
        )


@dataclass
class StreamFigures:
    process_id: str
    lines_expected: int
    lines_received: int
    bytes_expected: int
    bytes_received: int
    duplicate_events: int
    duplicate_lines: int
    conflicting_repeats: int
    missing_lines: list[tuple[int, int]]
    seq_gaps: list[tuple[int, int]]
    seqs_seen: list[tuple[int, int]]
    output_lost: list[dict[str, Any]]
    exited: bool
    closed: bool

    @classmethod
    def of(cls, stream: Stream) -> StreamFigures:
        text = stream.output()
        prefix = stream.process_id + "-"
        numbers = [int(line[len(prefix) :]) for line in text.decode(errors="replace").splitlines() if line]
        wanted = set(range(1, stream.lines + 1))
        seqs = sorted(stream.events)
        top = seqs[-1] if seqs else 0
        return cls(
            process_id=stream.process_id,
            lines_expected=stream.lines,
            lines_received=len(set(numbers) & wanted),
            bytes_expected=expected_bytes(stream.process_id, stream.lines),
            bytes_received=len(text),
            duplicate_events=stream.repeats,
            duplicate_lines=len(numbers) - len(set(numbers)),
            conflicting_repeats=stream.conflicts,
            missing_lines=ranges(wanted - set(numbers)),
            seq_gaps=ranges(set(range(1, top + 1)) - set(seqs)),
            seqs_seen=ranges(seqs),
            output_lost=stream.lost,
            exited=stream.exit_codes == [0],
            closed=stream.closed,
        )

    @property
    def lossy(self) -> bool:
        return bool(
            self.missing_lines
            or self.seq_gaps
            or self.output_lost
            or self.conflicting_repeats
            or not self.exited
            or not self.closed
        )


@dataclass
class RunResult:
    scenario: str
    index: int
    busy: int
    seconds: float
    streams: list[StreamFigures] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    logs: str | None = None

    @property
    def lossy(self) -> bool:
        return any(stream.lossy for stream in self.streams)

    def total(self, name: str) -> int:
        return sum(int(getattr(stream, name)) for stream in self.streams)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["lossy"] = self.lossy
        return data


@dataclass
class Summary:
    scenario: str
    busy: int
    runs: int
    lossy_runs: int
    error_runs: int
    lines_expected: int
    lines_received: int
    lines_missing: int
    bytes_expected: int
    bytes_received: int
    duplicate_events: int
    duplicate_lines: int
    output_lost_notices: int
    p50_seconds: float
    max_seconds: float


def summarize(results: list[RunResult]) -> list[Summary]:
    groups: dict[tuple[str, int], list[RunResult]] = {}
    for result in results:
        groups.setdefault((result.scenario, result.busy), []).append(result)
    summaries = []
    for (scenario, busy), runs in groups.items():
        times = [run.seconds for run in runs]
        expected = sum(run.total("lines_expected") for run in runs)
        received = sum(run.total("lines_received") for run in runs)
        summaries.append(
            Summary(
                scenario=scenario,
                busy=busy,
                runs=len(runs),
                lossy_runs=sum(run.lossy for run in runs),
                error_runs=sum(run.error is not None for run in runs),
                lines_expected=expected,
                lines_received=received,
                lines_missing=expected - received,
                bytes_expected=sum(run.total("bytes_expected") for run in runs),
                bytes_received=sum(run.total("bytes_received") for run in runs),
                duplicate_events=sum(run.total("duplicate_events") for run in runs),
                duplicate_lines=sum(run.total("duplicate_lines") for run in runs),
                output_lost_notices=sum(len(s.output_lost) for run in runs for s in run.streams),
                p50_seconds=percentile(times, 0.5),
                max_seconds=max(times),
            )
        )
    return summaries


def markdown(summaries: list[Summary]) -> str:
    lines = [
        "| scenario | busy loops | runs | lossy runs | lines expected | lines received | lines missing "
        "| bytes expected | bytes received | repeated events / lines | outputLost notices | errors "
        "| p50 run | max run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        cells = [
            s.scenario,
            s.busy,
            s.runs,
            s.lossy_runs,
            f"{s.lines_expected:,}",
            f"{s.lines_received:,}",
            f"{s.lines_missing:,}",
            f"{s.bytes_expected:,}",
            f"{s.bytes_received:,}",
            f"{s.duplicate_events} / {s.duplicate_lines}",
            s.output_lost_notices,
            s.error_runs,
            f"{s.p50_seconds:.1f} s",
            f"{s.max_seconds:.1f} s",
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def lossy_details(results: list[RunResult]) -> str:
    """One line per lossy or failed run, naming the exact ranges."""
    lines = []
    for run in results:
        if not run.lossy and run.error is None:
            continue
        for stream in run.streams:
            if stream.lossy:
                lines.append(
                    f"- {run.scenario} #{run.index} {stream.process_id}: missing lines {stream.missing_lines}, "
                    f"seq gaps {stream.seq_gaps}, seqs seen {stream.seqs_seen}, outputLost {stream.output_lost}, "
                    f"exited {stream.exited}, closed {stream.closed}; logs {run.logs}"
                )
        if run.error is not None:
            lines.append(f"- {run.scenario} #{run.index}: error {run.error}; logs {run.logs}")
    return "\n".join(lines)
