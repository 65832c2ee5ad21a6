"""The C allocator keeps large frames' buffers: a process that passes several 11 MB buffers at
a time (one 8 MiB read through the gateway) reuses its heap instead of faulting in fresh pages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from codexgw import allocator

REPO = Path(__file__).resolve().parents[2]

# Four 11 MB buffers alive at once, then freed, ten times over: the minor page faults it takes.
PROBE = """
import resource, sys
from codexgw.allocator import keep_large_buffers
tuned = keep_large_buffers() if sys.argv[1] == "tuned" else False
def frame_buffers():
    buffers = [b"x" * (11 * 1024 * 1024) for _ in range(4)]
    del buffers
frame_buffers()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    frame_buffers()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES_PER_ROUND = 4 * 11 * 1024 * 1024 // 4096

# A burst of 20 large frames, each followed by a small allocation that outlives it: RSS in MiB
# before, at the peak, and a second after the burst.
BURST = """
import time
from codexgw.allocator import keep_large_buffers
def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))
start = rss()
assert keep_large_buffers(trim_every=0.2)
kept, frames = [], []
for _ in range(20):
    frames.append(b"x" * (11 * 1024 * 1024))
    kept.append(b"y" * 2048)
peak = rss()
del frames
time.sleep(1)
print(start, peak, rss())
"""


def run_probe(code: str, *args: str, **extra_env: str) -> list[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")} | extra_env
    run = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    return run.stdout.split()


def probe(mode: str, **extra_env: str) -> tuple[str, int]:
    tuned, faults = run_probe(PROBE, mode, **extra_env)
    return tuned, int(faults)


def test_large_buffers_are_reused_instead_of_faulted_in_again():
    tuned, faults = probe("tuned")
    assert tuned == "True"
    assert faults < PAGES_PER_ROUND // 4  # ten rounds reuse the first round's pages
    _, untuned = probe("default")
    assert untuned > 5 * PAGES_PER_ROUND, untuned  # glibc's defaults: fresh pages most rounds


def test_free_memory_below_the_heaps_top_is_given_back_after_a_burst():
    start, peak, after = map(int, run_probe(BURST))
    assert peak - start > 200  # 20 frames of 11 MB were alive at once
    assert after - start < 11, (start, peak, after)  # not even one frame's worth kept (untrimmed: 22)


def test_an_operators_own_glibc_setting_is_left_alone():
    tuned, _ = probe("tuned", MALLOC_TRIM_THRESHOLD_="131072")
    assert tuned == "False"
    tuned, _ = probe("tuned", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")
    assert tuned == "False"


def test_a_frame_of_the_largest_size_comes_from_the_heap():
    from codexgw.websocket import MAX_FRAME_BYTES

    assert allocator.MMAP_THRESHOLD > MAX_FRAME_BYTES
    assert allocator.TRIM_THRESHOLD >= allocator.MMAP_THRESHOLD
