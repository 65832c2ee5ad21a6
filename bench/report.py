"""Result rows and the Markdown table the run prints (pasted as is into docs/performance.md)."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 2,000 samples is the 1,980th)."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Row:
    """One measurement for (a) direct, (b) gateway with bridge and executor in one process and
    (c) in two processes; ratios b/a and c/a are computed from the same run (from the same round:
    ``ratios`` when the row comes from several)."""

    what: str
    unit: str
    values: Sequence[float | None]  # (a), (b), (c)
    note: str = ""
    ratios: Sequence[float | None] | None = None  # b/a, c/a when not values[1:] / values[0]

    def ratio(self, index: int) -> str:
        a, value = self.values[0], self.values[index]
        if self.ratios is not None:
            found = self.ratios[index - 1]
            return "" if found is None else f"{found:.2f}"
        if value is None or not a:
            return ""
        return f"{value / a:.2f}"


def median_row(what: str, unit: str, rounds: Sequence[Sequence[float | None]], note: str) -> Row:
    """One row from rounds of (a), (b), (c) measured in turn: each cell and each ratio is the
    median over the rounds, a ratio being taken within its round (the noise of a shared machine
    then shows as the spread of the rounds' ratios, which the note gives)."""
    cells = [None if None in column else statistics.median(column) for column in zip(*rounds, strict=True)]
    if len(rounds) == 1:
        return Row(what, unit, cells, note)
    medians: list[float | None] = []
    spreads = []
    for label, index in (("b/a", 1), ("c/a", 2)):
        ratios = [value / a for a, value in ((r[0], r[index]) for r in rounds) if a and value is not None]
        medians.append(statistics.median(ratios) if ratios else None)
        if ratios:
            spreads.append(f"{label} {min(ratios):.2f} to {max(ratios):.2f}")
    note += f"; median of {len(rounds)} rounds" + (f", per round {', '.join(spreads)}" if spreads else "")
    return Row(what, unit, cells, note, medians)


@dataclass
class Fact:
    """A measurement with no direct counterpart (connection scale, relay)."""

    what: str
    value: str
    note: str = ""


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def comparison_table(rows: list[Row]) -> str:
    header = (
        "| measurement | unit | (a) direct | (b) gateway, 1 process | (c) gateway, 2 processes | b/a | c/a | note |"
    )
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        a, b, c = row.values
        cells = [row.what, row.unit, _fmt(a), _fmt(b), _fmt(c), row.ratio(1), row.ratio(2)]
        lines.append("| " + " | ".join([*cells, row.note]) + " |")
    return "\n".join(lines)


def facts_table(facts: list[Fact]) -> str:
    lines = ["| measurement | value | note |", "|---|---:|---|"]
    lines.extend(f"| {fact.what} | {fact.value} | {fact.note} |" for fact in facts)
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    return f"{os.cpu_count()} CPUs ({model}), {total_kib / 1024 / 1024:.1f} GiB RAM, Linux {platform.release()}"
