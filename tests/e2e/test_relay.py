"""The byte relay across two gateway processes: the PUT lands on one, the GET on the other, and
the bytes cross Redis. Large files, byte-exact (sha256), with the gateways' resident memory
sampled from /proc while they stream: it must stay bounded whatever the file size, with a fast
reader (the upload is streamed, not buffered) and with a slow one (the download waits for its
client instead of buffering what Redis delivers). And a gateway stopping mid-relay fails the
other gateway's side at once."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bridge.relay_client import RelayTicket
from codexgw import redis as gwredis
from tests.e2e.harness import GatewayCluster, GatewayProcess, mint_relay_ticket, wait_for

MiB = 1024 * 1024
RELAY_ENV = {"CXG_PUBLIC_HTTPS_BASE_URL": "https://gw.example.test"}
WORKSPACE = "ws-relay-e2e"
# Generous against the few MiB the relay itself holds (chunks in flight, socket buffers), and
# far below the file sizes: buffering either body would blow through it.
RSS_GROWTH_LIMIT = 150 * MiB

pytestmark = pytest.mark.gateway_cluster(env=RELAY_ENV)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class RssSampler:
    """Samples each gateway's resident set size every 20 ms while it runs."""

    gateways: list[GatewayProcess]
    baseline: dict[int, int] = field(default_factory=dict)
    peak: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.baseline = {g.pid: rss(g.pid) for g in self.gateways}
        self.peak = dict(self.baseline)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for pid in self.peak:
                self.peak[pid] = max(self.peak[pid], rss(pid))

    def growth(self) -> dict[int, int]:
        return {pid: self.peak[pid] - self.baseline[pid] for pid in self.peak}


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """256 MiB of random bytes and their sha256."""
    path = tmp_path_factory.mktemp("relay") / "random-256m"
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(256):
            block = os.urandom(MiB)
            digest.update(block)
            out.write(block)
    yield path, digest.hexdigest()
    path.unlink()


def first_bytes(path: Path, size: int, into: Path) -> tuple[Path, str]:
    with path.open("rb") as source:
        data = source.read(size)
    into.write_bytes(data)
    return into, hashlib.sha256(data).hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(MiB):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture
def mint(gateway_cluster: GatewayCluster, transactional_db: None) -> RelayTicket:
    """A ticket minted over HTTP by gateway 0, for two executors bound to the workspace."""
    return mint_relay_ticket(gateway_cluster[0].base_url, WORKSPACE, "user-relay-e2e")


def relay_through(
    cluster: GatewayCluster, ticket: RelayTicket, source: Path, dest: Path, *get_args: str
) -> tuple[float, RssSampler]:
    """``curl --upload-file`` to gateway 0 and ``curl -o`` from gateway 1, as the executors run
    them; returns the seconds the transfer took and the memory samples."""
    path = ticket.upload_url.removeprefix("https://gw.example.test")
    header = ["-H", f"Authorization: Bearer {ticket.ticket}"]
    with RssSampler(list(cluster)) as sampler:
        started = time.monotonic()
        get = subprocess.Popen(
            ["curl", "-sS", "-f", *header, *get_args, "-o", str(dest), cluster[1].base_url + path],
            stderr=subprocess.PIPE,
        )
        put = subprocess.run(
            ["curl", "-sS", "-f", *header, "--upload-file", str(source), cluster[0].base_url + path],
            capture_output=True,
            timeout=300,
        )
        assert get.wait(300) == 0, get.stderr.read() if get.stderr else b""
        elapsed = time.monotonic() - started
    assert put.returncode == 0, (put.stdout, put.stderr)
    assert put.stdout == f'{{"bytes":{source.stat().st_size},"status":"ok"}}'.encode()
    return elapsed, sampler


def report(label: str, size: int, elapsed: float, sampler: RssSampler) -> None:
    growth = ", ".join(f"{pid}: +{grown / MiB:.1f} MiB" for pid, grown in sampler.growth().items())
    print(f"\n{label}: {size / MiB:.0f} MiB in {elapsed:.2f} s = {size / MiB / elapsed:.0f} MiB/s; RSS growth {growth}")


def test_a_64_mib_file_crosses_two_gateways_byte_exact(gateway_cluster, mint, big_file, tmp_path):
    source, digest = first_bytes(big_file[0], 64 * MiB, tmp_path / "src")
    elapsed, sampler = relay_through(gateway_cluster, mint, source, tmp_path / "dst")
    report("64 MiB", 64 * MiB, elapsed, sampler)
    assert sha256_of(tmp_path / "dst") == digest
    assert all(grown < RSS_GROWTH_LIMIT for grown in sampler.growth().values()), sampler.growth()


def test_gateway_memory_stays_bounded_while_256_mib_stream_through(gateway_cluster, mint, big_file, tmp_path):
    source, digest = big_file
    elapsed, sampler = relay_through(gateway_cluster, mint, source, tmp_path / "dst")
    report("256 MiB", 256 * MiB, elapsed, sampler)
    assert sha256_of(tmp_path / "dst") == digest
    assert all(grown < RSS_GROWTH_LIMIT for grown in sampler.growth().values()), sampler.growth()


def test_a_slow_download_holds_the_upload_back_instead_of_filling_memory(gateway_cluster, mint, big_file, tmp_path):
    source, digest = big_file
    elapsed, sampler = relay_through(gateway_cluster, mint, source, tmp_path / "dst", "--limit-rate", "80M")
    report("256 MiB, reader at 80 MB/s", 256 * MiB, elapsed, sampler)
    assert elapsed > 256 * MiB / (80 * 1024 * 1024) * 0.8  # the reader did set the pace
    assert sha256_of(tmp_path / "dst") == digest
    assert all(grown < RSS_GROWTH_LIMIT for grown in sampler.growth().values()), sampler.growth()


def test_a_gateway_stopping_mid_relay_fails_the_other_side_at_once(gateway_cluster, mint, tmp_path):
    """SIGTERM on the PUT's gateway: the GET on the other gateway fails now, not at the TTL."""
    path = mint.upload_url.removeprefix("https://gw.example.test")
    host, port = gateway_cluster[0].host_port.rsplit(":", 1)
    bearer = f"Authorization: Bearer {mint.ticket}"
    get = subprocess.Popen(
        ["curl", "-sS", "-H", bearer, "-o", str(tmp_path / "dst"), gateway_cluster[1].base_url + path],
        stderr=subprocess.PIPE,
    )
    try:
        with socket.create_connection((host, int(port)), timeout=10) as upload:
            head = f"PUT {path} HTTP/1.1\r\nHost: x\r\n{bearer}\r\nContent-Length: {64 * MiB}\r\n\r\n"
            upload.sendall(head.encode() + os.urandom(4 * MiB))  # and then nothing more
            assert wait_for(lambda: (tmp_path / "dst").exists() and (tmp_path / "dst").stat().st_size > 0, 10)
            started = time.monotonic()
            gateway_cluster[0].terminate()
            assert get.wait(10) in (18, 56), get.stderr.read() if get.stderr else b""
    finally:
        get.kill()
        get.wait()
    assert time.monotonic() - started < 10  # the ticket had 600 s left
    assert (tmp_path / "dst").stat().st_size < 64 * MiB
    client = gwredis.sync_client()
    assert client is not None
    ticket = client.hmget(gwredis.key("relay", "t", mint.ticket), ["state", "outcome", "reason"])
    assert ticket == ["done", "upload_failed", "the gateway serving the other side stopped"]
