"""Resource readings of other processes from /proc (Linux only, which is what the bench runs on)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may contain spaces; every field after its closing parenthesis is fixed.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class CpuMeter:
    """CPU seconds spent by a set of processes between ``start()`` and ``stop()``."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.pids = list(pids)
        self._start: dict[int, float] = {}
        self.used: dict[int, float] = {}

    def start(self) -> CpuMeter:
        self._start = {pid: cpu_seconds(pid) for pid in self.pids}
        return self

    def stop(self) -> dict[int, float]:
        self.used = {pid: cpu_seconds(pid) - self._start[pid] for pid in self.pids}
        return self.used

    @property
    def total(self) -> float:
        return sum(self.used.values())


@dataclass
class RssPeak:
    """Samples RSS of ``pids`` every 20 ms in a thread while the ``with`` block runs."""

    pids: list[int]
    baseline: dict[int, int] = field(default_factory=dict)
    peak: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssPeak:
        self.baseline = {pid: rss_bytes(pid) for pid in self.pids}
        self.peak = dict(self.baseline)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], rss_bytes(pid))
