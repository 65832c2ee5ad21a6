"""The byte relay: a PUT to one gateway process and a GET from another, with curl (as the
executors run it), while the gateways' RSS is sampled."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.proc import RssPeak

MiB = 1024 * 1024
PUBLIC_BASE = "https://gw.bench.invalid"
RELAY_ENV = {"CXG_PUBLIC_HTTPS_BASE_URL": PUBLIC_BASE}


@dataclass
class RelayResult:
    mb_s: float
    peak_rss_mib: dict[int, float]
    growth_mib: dict[int, float]


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as out:
        for offset in range(0, size, MiB):
            out.write(os.urandom(min(MiB, size - offset)))
    return path


def bound_pair(workspace: str) -> tuple[str, str]:
    """Two executors bound to ``workspace`` (synchronous ORM, outside the event loop)."""
    from executors import services

    ids = []
    for name in ("relay-src", "relay-dst"):
        exe_id = services.register_executor("user-bench", name).executor.exe_id
        services.bind_executor(workspace, exe_id, name, "", False)
        ids.append(exe_id)
    return ids[0], ids[1]


def relay(
    put_base: str, get_base: str, pids: list[int], workspace: str, pair: tuple[str, str], source: Path
) -> RelayResult:
    from django.conf import settings

    from bridge.relay_client import RelayClient

    ticket = asyncio.run(RelayClient(put_base, settings.CXG_INTERNAL_SHARED_SECRET).create(workspace, *pair, 600))
    path = ticket.upload_url.removeprefix(PUBLIC_BASE)
    auth = ["-H", f"Authorization: Bearer {ticket.ticket}"]
    size = source.stat().st_size
    with RssPeak(pids) as rss:
        started = time.perf_counter()
        # curl, as the executors run it; the arguments are the bench's own.
        get = subprocess.Popen(  # noqa: S603
            ["curl", "-sS", "-f", *auth, "-o", "/dev/null", "-w", "%{size_download}", get_base + path],  # noqa: S607
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        put = subprocess.run(  # noqa: S603
            ["curl", "-sS", "-f", *auth, "--upload-file", str(source), put_base + path],  # noqa: S607
            capture_output=True,
            timeout=600,
            check=False,
        )
        downloaded, get_err = get.communicate(timeout=600)
        elapsed = time.perf_counter() - started
    if put.returncode != 0 or get.returncode != 0 or int(downloaded or 0) != size:
        raise RuntimeError(f"relay failed: PUT {put.returncode} {put.stderr!r}, GET {get.returncode} {get_err!r}")
    return RelayResult(
        mb_s=size / elapsed / 1e6,
        peak_rss_mib={pid: peak / MiB for pid, peak in rss.peak.items()},
        growth_mib={pid: (rss.peak[pid] - rss.baseline[pid]) / MiB for pid in pids},
    )
