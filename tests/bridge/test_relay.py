"""The byte relay: ``POST /api/exec-gateway/relay/create`` in process (DRF test client, real
PostgreSQL and Redis), ``PUT|GET /relay/{ticket}`` on a real gateway process (``manage.py serve``)
driven by curl, as the executors drive it, and by raw sockets
where a client has to misbehave. The multi-process, large-file and memory tests are in
``tests/e2e/test_relay.py``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
from django.conf import settings

from bridge import relay, relay_tickets
from bridge.relay_client import RelayClient, RelayCreateError
from codexgw import redis as gwredis
from executors import services
from tests.e2e.harness import GatewayProcess, wait_for

PUBLIC_BASE = "https://gw.example.test/"
CHUNK = 64 * 1024
BUFFERED = 4
RELAY_ENV = {
    "CXG_PUBLIC_HTTPS_BASE_URL": PUBLIC_BASE,
    # Small chunks so a few MiB cross many chunks and the backpressure window (256 KiB).
    "CXG_RELAY_CHUNK_BYTES": str(CHUNK),
    "CXG_RELAY_BUFFERED_CHUNKS": str(BUFFERED),
}
CREATE = "/api/exec-gateway/relay/create"
TICKET = re.compile(r"^rly_[A-Za-z0-9_-]{43}$")
MiB = 1024 * 1024


# --- helpers -------------------------------------------------------------------------------------


def redis_client() -> Any:
    client = gwredis.sync_client()
    assert client is not None
    return client


def relay_keys() -> dict[str, int]:
    """Every relay key under the test prefix, with its TTL in ms."""
    client = redis_client()
    return {key: client.pttl(key) for key in client.scan_iter(match=gwredis.key("relay", "*"))}


def ticket_field(ticket: str, field: str) -> str | None:
    value = redis_client().hget(gwredis.key("relay", "t", ticket), field)
    return str(value) if value is not None else None


def live_tickets(workspace: str) -> set[str]:
    return set(redis_client().zrange(gwredis.key("relay", "w", workspace), 0, -1))


def new_ticket(ttl_seconds: int = 30, max_bytes: int = 0, workspace: str = "ws-relay") -> str:
    return relay_tickets.create_ticket(workspace, "exe-src", "exe-dst", ttl_seconds, max_bytes).ticket


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class CurlResult:
    exit_code: int
    status: int
    body: bytes  # the PUT's response body, or the GET's error body

    def json(self) -> Any:
        return json.loads(self.body)


class Curl:
    """``curl`` in the background, as an executor runs it."""

    def __init__(self, args: list[str], output: Path | None = None, stdin: bytes | None = None) -> None:
        self.output = output
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._writer: threading.Thread | None = None
        if stdin is not None:
            pipe = self.process.stdin
            assert pipe is not None
            self.process.stdin = None  # written here, not by communicate()
            self._writer = threading.Thread(target=_feed, args=(pipe, stdin), daemon=True)
            self._writer.start()

    @classmethod
    def put(cls, url: str, ticket: str, source: Path) -> Curl:
        return cls(_curl_args(url, ticket, "--upload-file", str(source)))

    @classmethod
    def put_stdin(cls, url: str, ticket: str, data: bytes) -> Curl:
        """A chunked upload (curl knows no length for stdin)."""
        return cls(_curl_args(url, ticket, "--upload-file", "-"), stdin=data)

    @classmethod
    def get(cls, url: str, ticket: str, output: Path, *extra: str) -> Curl:
        return cls(_curl_args(url, ticket, "-o", str(output), *extra), output)

    def result(self, timeout: float = 30) -> CurlResult:
        stdout, _ = self.process.communicate(timeout=timeout)
        if self._writer is not None:
            self._writer.join(timeout)
        body, _, status = stdout.rpartition(b"\n")
        if self.output is not None:
            body = self.output.read_bytes() if self.output.exists() else b""
        return CurlResult(self.process.returncode, int(status or 0), body)

    def received(self) -> int:
        return self.output.stat().st_size if self.output is not None and self.output.exists() else 0


def _feed(pipe: IO[bytes], data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError), pipe:
        pipe.write(data)


def _curl_args(url: str, ticket: str, *extra: str) -> list[str]:
    return [
        "curl",
        "-sS",
        "--max-time",
        "60",
        "-H",
        f"Authorization: Bearer {ticket}",
        "-w",
        "\n%{http_code}",
        *extra,
        url,
    ]


def run_curl(*args: str, timeout: float = 30) -> CurlResult:
    completed = subprocess.run(["curl", "-sS", "--max-time", "30", "-w", "\n%{http_code}", *args], capture_output=True)
    body, _, status = completed.stdout.rpartition(b"\n")
    return CurlResult(completed.returncode, int(status or 0), body)


@pytest.fixture(scope="module")
def relay_gateway(django_db_setup: None) -> Iterator[GatewayProcess]:
    """One real gateway with the relay enabled, shared by this module's tests (they only share
    its process: every test starts with no Redis keys)."""
    gateway = GatewayProcess.start(env=RELAY_ENV)
    try:
        yield gateway
    finally:
        gateway.terminate()


@pytest.fixture
def relay_url(relay_gateway: GatewayProcess) -> Callable[[str], str]:
    return lambda ticket: f"{relay_gateway.base_url}/relay/{ticket}"


@pytest.fixture
def relay_on(settings: Any) -> None:
    settings.CXG_PUBLIC_HTTPS_BASE_URL = PUBLIC_BASE


@pytest.fixture
def bound(db: None) -> dict[str, str]:
    """Two executors bound to workspace ``ws-a`` and one bound only to ``ws-b``."""
    ids = {}
    for key, workspace in (("src", "ws-a"), ("dst", "ws-a"), ("other", "ws-b")):
        exe_id = services.register_executor("user-relay").executor.exe_id
        services.bind_executor(workspace, exe_id, f"env-{key}", "", False)
        ids[key] = exe_id
    return ids


def create_body(bound: dict[str, str], **overrides: Any) -> dict[str, Any]:
    return {"workspace_id": "ws-a", "source_exe_id": bound["src"], "dest_exe_id": bound["dst"], **overrides}


# --- POST /api/exec-gateway/relay/create -------------------------------------------------------


@pytest.mark.usefixtures("relay_on")
def test_create_mints_a_ticket_with_one_url_for_both_sides(api, shared_headers, bound):
    before = datetime.now(UTC)
    response = api.post(CREATE, create_body(bound, ttl_seconds=120), format="json", **shared_headers)
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"ticket", "upload_url", "download_url", "expires_at"}
    assert TICKET.match(body["ticket"])
    assert body["upload_url"] == body["download_url"] == f"https://gw.example.test/relay/{body['ticket']}"
    assert body["expires_at"].endswith("Z")
    expires = datetime.fromisoformat(body["expires_at"])
    assert before + timedelta(seconds=118) <= expires <= datetime.now(UTC) + timedelta(seconds=121)
    # Every key the relay wrote expires on its own.
    keys = relay_keys()
    assert keys
    assert all(ttl > 0 for ttl in keys.values()), keys
    assert live_tickets("ws-a") == {body["ticket"]}


@pytest.mark.usefixtures("relay_on")
@pytest.mark.parametrize("ttl", [None, 0, -5])
def test_create_applies_the_default_ttl(api, shared_headers, bound, settings, ttl):
    settings.CXG_RELAY_DEFAULT_TTL = 42.0
    extra = {} if ttl is None else {"ttl_seconds": ttl}
    response = api.post(CREATE, create_body(bound, **extra), format="json", **shared_headers)
    assert response.status_code == 201, response.content
    left = datetime.fromisoformat(response.json()["expires_at"]) - datetime.now(UTC)
    assert timedelta(seconds=40) <= left <= timedelta(seconds=42)


def test_tickets_are_distinct_and_well_formed():
    tickets = {new_ticket(workspace=f"ws-{n}") for n in range(50)}
    assert len(tickets) == 50
    assert all(TICKET.match(ticket) and relay_tickets.is_ticket(ticket) for ticket in tickets)
    assert not relay_tickets.is_ticket("rly_short")
    assert not relay_tickets.is_ticket("rly_" + "a" * 42 + "=")


@pytest.mark.usefixtures("relay_on")
@pytest.mark.parametrize(
    "headers",
    [{}, {"HTTP_AUTHORIZATION": "Bearer wrong"}, {"HTTP_AUTHORIZATION": "bearer test-shared-secret"}],
    ids=["missing", "wrong", "lowercase-scheme"],
)
def test_create_needs_the_shared_secret(api, bound, headers):
    assert settings.CXG_INTERNAL_SHARED_SECRET == "test-shared-secret"
    response = api.post(CREATE, create_body(bound), format="json", **headers)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}


@pytest.mark.parametrize("override", [{"CXG_PUBLIC_HTTPS_BASE_URL": ""}, {"REDIS_URL": ""}])
def test_create_is_503_while_the_relay_is_disabled(api, shared_headers, bound, settings, override):
    settings.CXG_PUBLIC_HTTPS_BASE_URL = PUBLIC_BASE
    for name, value in override.items():
        setattr(settings, name, value)
    response = api.post(CREATE, create_body(bound), format="json", **shared_headers)
    assert response.status_code == 503
    assert "relay not enabled" in response.json()["error"]


@pytest.mark.usefixtures("relay_on")
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"source_exe_id": "a", "dest_exe_id": "b"}, "workspace_id, source_exe_id, dest_exe_id required"),
        ({"workspace_id": "w", "source_exe_id": " ", "dest_exe_id": "b"}, "workspace_id, source_exe_id, dest_exe_id"),
        ({"workspace_id": "w", "source_exe_id": "a", "dest_exe_id": "b", "ttl_seconds": "soon"}, "ttl_seconds"),
        ({"workspace_id": "w", "source_exe_id": "a", "dest_exe_id": "b", "ttl_seconds": 86401}, "ttl_seconds"),
        ({"workspace_id": "w", "source_exe_id": "a", "dest_exe_id": "b", "max_bytes": -1}, "max_bytes"),
        ({"workspace_id": ["w"], "source_exe_id": "a", "dest_exe_id": "b"}, "workspace_id"),
    ],
)
def test_create_validates_the_body(api, shared_headers, db, body, message):
    response = api.post(CREATE, body, format="json", **shared_headers)
    assert response.status_code == 400
    assert message in response.json()["error"]


@pytest.mark.usefixtures("relay_on")
def test_create_rejects_undecodable_json(api, shared_headers, db):
    response = api.post(CREATE, "{not json", content_type="application/json", **shared_headers)
    assert response.status_code == 400
    assert response.json() == {"error": "invalid JSON"}


@pytest.mark.usefixtures("relay_on")
@pytest.mark.parametrize(("side", "executor"), [("source_exe_id", "other"), ("dest_exe_id", "other")])
def test_create_is_403_unless_both_executors_are_bound_to_the_workspace(api, shared_headers, bound, side, executor):
    response = api.post(CREATE, create_body(bound, **{side: bound[executor]}), format="json", **shared_headers)
    assert response.status_code == 403
    assert response.json() == {"error": f"executor not in workspace: {bound[executor]}"}
    response = api.post(CREATE, create_body(bound, **{side: "exe-unknown"}), format="json", **shared_headers)
    assert response.json() == {"error": "executor not in workspace: exe-unknown"}
    assert relay_keys() == {}


@pytest.mark.usefixtures("relay_on")
def test_create_checks_the_source_before_the_destination(api, shared_headers, bound):
    response = api.post(
        CREATE, create_body(bound, source_exe_id="exe-x", dest_exe_id="exe-y"), format="json", **shared_headers
    )
    assert response.json() == {"error": "executor not in workspace: exe-x"}


@pytest.mark.usefixtures("relay_on")
def test_the_workspace_cap_counts_pending_tickets_until_they_expire(api, shared_headers, bound, settings):
    settings.CXG_RELAY_MAX_PER_WORKSPACE = 2
    for _ in range(2):
        assert api.post(CREATE, create_body(bound, ttl_seconds=1), format="json", **shared_headers).status_code == 201
    response = api.post(CREATE, create_body(bound), format="json", **shared_headers)
    assert response.status_code == 429
    assert response.json() == {"error": "relay: workspace concurrent relay cap reached"}
    # Another workspace has its own count.
    services.bind_executor("ws-b", bound["src"], "env-src", "", False)
    other = create_body(bound, workspace_id="ws-b", source_exe_id=bound["src"], dest_exe_id=bound["other"])
    assert api.post(CREATE, other, format="json", **shared_headers).status_code == 201
    # Unused tickets stop counting when they expire, with nobody cleaning up after them.
    time.sleep(1.1)
    assert api.post(CREATE, create_body(bound), format="json", **shared_headers).status_code == 201


@pytest.mark.usefixtures("relay_on")
def test_create_is_503_when_redis_is_down(api, shared_headers, bound, redis_down):
    response = api.post(CREATE, create_body(bound), format="json", **shared_headers)
    assert response.status_code == 503


# --- PUT|GET /relay/{ticket}: transfers --------------------------------------------------------


def test_put_first_then_get_relays_the_bytes_exactly(relay_url, tmp_path):
    source = random_file(tmp_path / "src", 3 * MiB + 12345)
    ticket = new_ticket()
    put = Curl.put(relay_url(ticket), ticket, source)
    assert wait_for(lambda: ticket_field(ticket, "put") == "1", 10)
    get = Curl.get(relay_url(ticket), ticket, tmp_path / "dst")
    downloaded, uploaded = get.result(), put.result()
    assert (downloaded.exit_code, downloaded.status) == (0, 200)
    assert (uploaded.status, uploaded.json()) == (200, {"bytes": source.stat().st_size, "status": "ok"})
    assert sha256(tmp_path / "dst") == sha256(source)


def test_get_first_then_put_relays_the_bytes_exactly(relay_url, tmp_path):
    source = random_file(tmp_path / "src", 2 * MiB + 1)
    ticket = new_ticket()
    get = Curl.get(relay_url(ticket), ticket, tmp_path / "dst", "-D", str(tmp_path / "headers"))
    assert wait_for(lambda: ticket_field(ticket, "get") == "1", 10)
    uploaded = Curl.put(relay_url(ticket), ticket, source).result()
    downloaded = get.result()
    assert uploaded.json() == {"bytes": source.stat().st_size, "status": "ok"}
    assert (downloaded.exit_code, downloaded.status) == (0, 200)
    assert sha256(tmp_path / "dst") == sha256(source)
    headers = (tmp_path / "headers").read_text().lower()
    assert "content-type: application/octet-stream" in headers
    assert "transfer-encoding: chunked" in headers


def test_a_chunked_upload_and_an_empty_one(relay_url, tmp_path):
    data = os.urandom(MiB + 7)
    ticket = new_ticket()
    get = Curl.get(relay_url(ticket), ticket, tmp_path / "dst")
    uploaded = Curl.put_stdin(relay_url(ticket), ticket, data).result()
    assert uploaded.json() == {"bytes": len(data), "status": "ok"}
    assert get.result().status == 200
    assert (tmp_path / "dst").read_bytes() == data

    empty = random_file(tmp_path / "empty", 0)
    ticket = new_ticket()
    get = Curl.get(relay_url(ticket), ticket, tmp_path / "dst-empty")
    assert Curl.put(relay_url(ticket), ticket, empty).result().json() == {"bytes": 0, "status": "ok"}
    downloaded = get.result()
    assert (downloaded.exit_code, downloaded.status, downloaded.body) == (0, 200, b"")


def test_the_upload_streams_to_the_download_before_it_ends(relay_gateway, relay_url, tmp_path):
    """Bytes reach the GET while the PUT is still sending: nothing waits for the whole body."""
    first, rest = os.urandom(MiB), os.urandom(MiB)
    ticket = new_ticket()
    get = Curl.get(relay_url(ticket), ticket, tmp_path / "dst")
    with raw_put(relay_gateway, ticket, len(first) + len(rest)) as sock:
        sock.sendall(first)
        assert wait_for(lambda: get.received() >= len(first) - BUFFERED * CHUNK, 10), get.received()
        assert get.process.poll() is None
        sock.sendall(rest)
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 200"), response
    assert get.result().status == 200
    assert (tmp_path / "dst").read_bytes() == first + rest


def test_a_finished_relay_cleans_up_and_refuses_both_sides_with_410(relay_url, tmp_path):
    source = random_file(tmp_path / "src", 300 * 1024)
    ticket = new_ticket(workspace="ws-clean")
    get = Curl.get(relay_url(ticket), ticket, tmp_path / "dst")
    assert Curl.put(relay_url(ticket), ticket, source).result().status == 200
    assert get.result().status == 200
    # Only the ticket's tombstone is left, briefly; the workspace count is back to zero.
    keys = relay_keys()
    assert list(keys) == [gwredis.key("relay", "t", ticket)]
    assert 0 < keys[gwredis.key("relay", "t", ticket)] <= relay.FINISHED_TOMBSTONE_MS
    assert (ticket_field(ticket, "state"), ticket_field(ticket, "outcome")) == ("done", "ok")
    assert live_tickets("ws-clean") == set()
    for result in (Curl.put(relay_url(ticket), ticket, source).result(), run_curl(*auth(ticket), relay_url(ticket))):
        assert (result.status, result.json()) == (410, {"error": "relay already finished"})


# --- refusals ------------------------------------------------------------------------------------


def auth(ticket: str) -> list[str]:
    return ["-H", f"Authorization: Bearer {ticket}"]


def test_the_bearer_must_be_the_url_ticket(relay_url, tmp_path):
    ticket, other = new_ticket(), new_ticket()
    for headers in ([], ["-H", f"Authorization: bearer {ticket}"], auth(other), ["-H", "Authorization: Bearer "]):
        for method in (["-X", "GET"], ["--upload-file", str(random_file(tmp_path / "f", 10))]):
            result = run_curl(*headers, *method, relay_url(ticket))
            assert (result.status, result.json()) == (401, {"error": "unauthorized"}), headers
    assert (ticket_field(ticket, "put"), ticket_field(ticket, "get")) == ("0", "0")


def test_an_unknown_or_expired_ticket_is_410(relay_url):
    unknown = relay_tickets.TICKET_PREFIX + "A" * 43
    expired = new_ticket(ttl_seconds=1)
    time.sleep(1.05)
    for ticket in (unknown, "rly_malformed", expired):
        result = run_curl(*auth(ticket), relay_url(ticket))
        assert (result.status, result.json()) == (410, {"error": "ticket not found or expired"})


def test_a_second_put_is_423_while_the_first_holds_its_side(relay_url, tmp_path):
    source = random_file(tmp_path / "src", 2 * MiB)
    ticket = new_ticket()
    put = Curl.put(relay_url(ticket), ticket, source)
    assert wait_for(lambda: ticket_field(ticket, "put") == "1", 10)
    second = Curl.put(relay_url(ticket), ticket, source).result()
    assert (second.status, second.json()) == (423, {"error": "PUT side already claimed"})
    # The first PUT is unaffected.
    get = Curl.get(relay_url(ticket), ticket, tmp_path / "dst")
    assert put.result().status == 200
    assert get.result().status == 200
    assert sha256(tmp_path / "dst") == sha256(source)


def test_a_second_get_is_423_while_the_first_holds_its_side(relay_url, tmp_path):
    source = random_file(tmp_path / "src", 300 * 1024)
    ticket = new_ticket()
    get = Curl.get(relay_url(ticket), ticket, tmp_path / "dst")
    assert wait_for(lambda: ticket_field(ticket, "get") == "1", 10)
    second = run_curl(*auth(ticket), relay_url(ticket))
    assert (second.status, second.json()) == (423, {"error": "GET side already claimed"})
    assert Curl.put(relay_url(ticket), ticket, source).result().status == 200
    assert get.result().status == 200
    assert sha256(tmp_path / "dst") == sha256(source)


def test_a_download_needs_http_1_1(relay_url):
    ticket = new_ticket()
    result = run_curl("--http1.0", *auth(ticket), relay_url(ticket))
    assert (result.status, result.json()) == (505, {"error": "the download needs HTTP/1.1"})
    assert ticket_field(ticket, "get") == "0"


def test_other_methods_are_405(relay_url):
    ticket = new_ticket()
    result = run_curl("-X", "DELETE", *auth(ticket), relay_url(ticket))
    assert result.status == 405


# --- timeouts ------------------------------------------------------------------------------------


def test_a_put_without_a_get_times_out_with_408(relay_url, tmp_path):
    source = random_file(tmp_path / "src", 2 * MiB)
    ticket = new_ticket(ttl_seconds=1, workspace="ws-ttl")
    started = time.monotonic()
    result = Curl.put(relay_url(ticket), ticket, source).result()
    assert 0.8 <= time.monotonic() - started < 5
    assert result.status == 408
    assert result.json()["error"] == "timed out waiting for GET side"
    assert result.json()["bytes"] <= 2 * MiB
    assert_relay_over(ticket, "ws-ttl", "timeout")


def test_a_get_without_a_put_times_out_with_408(relay_url, tmp_path):
    ticket = new_ticket(ttl_seconds=1, workspace="ws-ttl")
    started = time.monotonic()
    result = Curl.get(relay_url(ticket), ticket, tmp_path / "dst").result()
    assert 0.8 <= time.monotonic() - started < 5
    assert (result.status, result.json()) == (408, {"error": "timed out waiting for PUT side"})
    assert_relay_over(ticket, "ws-ttl", "timeout")
    late = run_curl(*auth(ticket), relay_url(ticket))
    assert late.status == 410


def test_a_relay_that_outlives_its_ticket_fails_both_sides(relay_gateway, relay_url, tmp_path):
    ticket = new_ticket(ttl_seconds=2, workspace="ws-ttl")
    get = Curl.get(relay_url(ticket), ticket, tmp_path / "dst")
    assert wait_for(lambda: ticket_field(ticket, "get") == "1", 10)
    with raw_put(relay_gateway, ticket, 4 * MiB) as sock:
        sock.sendall(os.urandom(MiB))  # then the upload stalls past the ticket's expiry
        response = read_response(sock, timeout=10)
    assert response.startswith(b"HTTP/1.1 408"), response
    assert b"relay expired before the transfer completed" in response
    downloaded = get.result()
    assert downloaded.status == 200  # the body had started: the transfer itself fails
    assert downloaded.exit_code in (18, 56), downloaded
    assert get.received() < 4 * MiB
    assert_relay_over(ticket, "ws-ttl", "timeout")


def test_a_download_that_stops_reading_cannot_hold_the_relay_past_its_ttl(relay_gateway, relay_url, tmp_path):
    source = random_file(tmp_path / "src", 32 * MiB)
    ticket = new_ticket(ttl_seconds=2, workspace="ws-ttl")
    host, port = relay_gateway.host_port.rsplit(":", 1)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.connect((host, int(port)))
        sock.sendall(f"GET /relay/{ticket} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ticket}\r\n\r\n".encode())
        started = time.monotonic()
        uploaded = Curl.put(relay_url(ticket), ticket, source).result()  # the GET never reads
        assert time.monotonic() - started < 6
        # The gateway dropped the stalled download too (without this test reading from it).
        assert wait_for(lambda: tcp_state(sock) != TCP_ESTABLISHED, 5), tcp_state(sock)
    assert (uploaded.status, uploaded.json()["error"]) == (408, "relay expired before the transfer completed")
    assert_relay_over(ticket, "ws-ttl", "timeout")


TCP_ESTABLISHED = 1


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of ``sock`` (``struct tcp_info.tcpi_state``)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def assert_relay_over(ticket: str, workspace: str, outcome: str) -> None:
    assert wait_for(lambda: ticket_field(ticket, "state") == "done", 5)
    assert ticket_field(ticket, "outcome") == outcome
    assert live_tickets(workspace) == set()
    # No bytes or frames are left for anyone.
    assert set(relay_keys()) <= {gwredis.key("relay", "t", ticket)} | {
        gwredis.key("relay", kind, ticket) for kind in ("d", "c")
    }
    assert all(ttl <= relay.FINISHED_TOMBSTONE_MS for ttl in relay_keys().values())


# --- failures mid-stream --------------------------------------------------------------------------


class raw_put:
    """A PUT over a plain socket, for uploads that stall or break off."""

    def __init__(self, gateway: GatewayProcess, ticket: str, length: int | None) -> None:
        host, port = gateway.host_port.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
        head = (
            f"PUT /relay/{ticket} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ticket}\r\n"
            f"Connection: close\r\n{framing}\r\n\r\n"
        )
        self.sock.sendall(head.encode())

    def __enter__(self) -> socket.socket:
        return self.sock

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def read_response(sock: socket.socket, timeout: float = 30) -> bytes:
    """Everything until the server closes (the requests say ``Connection: close``)."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_an_upload_that_breaks_off_fails_the_download_visibly(relay_gateway, relay_url, tmp_path):
    ticket = new_ticket(workspace="ws-break")
    get = Curl.get(relay_url(ticket), ticket, tmp_path / "dst")
    with raw_put(relay_gateway, ticket, 8 * MiB) as sock:
        sock.sendall(os.urandom(2 * MiB))
        assert wait_for(lambda: get.received() > 0, 10)
    downloaded = get.result()
    # curl: 18 "transfer closed with outstanding read data remaining" or 56 "connection reset".
    assert downloaded.status == 200
    assert downloaded.exit_code in (18, 56), downloaded
    assert get.received() < 8 * MiB
    assert_relay_over(ticket, "ws-break", "upload_failed")


def test_an_upload_that_breaks_off_before_any_byte_fails_the_download_with_502(relay_gateway, relay_url, tmp_path):
    ticket = new_ticket(workspace="ws-break")
    get = Curl.get(relay_url(ticket), ticket, tmp_path / "dst")
    assert wait_for(lambda: ticket_field(ticket, "get") == "1", 10)
    with raw_put(relay_gateway, ticket, MiB) as sock:
        sock.sendall(b"x" * 1000)
        assert wait_for(lambda: ticket_field(ticket, "put") == "1", 10)
    downloaded = get.result()
    assert (downloaded.status, downloaded.json()) == (502, {"error": "PUT connection lost"})
    assert_relay_over(ticket, "ws-break", "upload_failed")


def test_an_over_limit_upload_fails_both_sides(relay_url, tmp_path):
    """Content-Length above max_bytes: refused at once; the waiting GET fails with 502."""
    source = random_file(tmp_path / "src", MiB + 1)
    ticket = new_ticket(max_bytes=MiB, workspace="ws-limit")
    get = Curl.get(relay_url(ticket), ticket, tmp_path / "dst")
    assert wait_for(lambda: ticket_field(ticket, "get") == "1", 10)
    uploaded = Curl.put(relay_url(ticket), ticket, source).result()
    assert (uploaded.status, uploaded.json()) == (
        413,
        {"bytes": 0, "error": f"upload of {MiB + 1} bytes exceeds max_bytes {MiB}"},
    )
    downloaded = get.result()
    assert (downloaded.status, downloaded.json()["error"]) == (
        502,
        f"upload of {MiB + 1} bytes exceeds max_bytes {MiB}",
    )
    assert_relay_over(ticket, "ws-limit", "too_large")


def test_an_over_limit_chunked_upload_aborts_the_download_mid_stream(relay_url, tmp_path):
    """No length up front: the overflow is found mid-stream, after the GET has started."""
    ticket = new_ticket(max_bytes=MiB, workspace="ws-limit")
    get = Curl.get(relay_url(ticket), ticket, tmp_path / "dst")
    uploaded = Curl.put_stdin(relay_url(ticket), ticket, os.urandom(4 * MiB)).result()
    assert uploaded.status == 413
    assert uploaded.json()["error"] == f"upload exceeds max_bytes {MiB}"
    assert MiB < uploaded.json()["bytes"] <= 4 * MiB
    downloaded = get.result()
    assert downloaded.status == 200
    assert downloaded.exit_code in (18, 56), downloaded
    assert 0 < get.received() <= MiB  # never a byte past the limit
    assert_relay_over(ticket, "ws-limit", "too_large")


def test_a_download_that_breaks_off_fails_the_upload(relay_gateway, relay_url, tmp_path):
    source = random_file(tmp_path / "src", 8 * MiB)
    ticket = new_ticket(workspace="ws-break")
    host, port = relay_gateway.host_port.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET /relay/{ticket} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ticket}\r\n\r\n".encode())
        put = Curl.put(f"http://{relay_gateway.host_port}/relay/{ticket}", ticket, source)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    uploaded = put.result()
    assert (uploaded.status, uploaded.json()["error"]) == (502, "GET connection lost")
    assert 0 < uploaded.json()["bytes"] < 8 * MiB
    assert_relay_over(ticket, "ws-break", "download_failed")


# --- disabled relay and the client ---------------------------------------------------------------


def test_relay_routes_are_404_while_the_relay_is_disabled(django_db_setup):
    gateway = GatewayProcess.start(env={"CXG_PUBLIC_HTTPS_BASE_URL": ""})
    try:
        ticket = new_ticket()
        result = run_curl(*auth(ticket), f"{gateway.base_url}/relay/{ticket}")
        assert (result.status, result.json()) == (404, {"error": "not found"})
        result = run_curl(
            "-H",
            f"Authorization: Bearer {settings.CXG_INTERNAL_SHARED_SECRET}",
            "--json",
            "{}",
            gateway.base_url + CREATE,
        )
        assert result.status == 503
    finally:
        gateway.terminate()


@pytest.fixture
def committed_bindings(transactional_db: None) -> dict[str, str]:
    ids = {}
    for key in ("src", "dst"):
        exe_id = services.register_executor("user-relay").executor.exe_id
        services.bind_executor("ws-client", exe_id, f"env-{key}", "", False)
        ids[key] = exe_id
    return ids


async def test_relay_client_creates_tickets_the_executors_can_use(relay_gateway, committed_bindings, tmp_path):
    client = RelayClient(relay_gateway.base_url, settings.CXG_INTERNAL_SHARED_SECRET)
    ticket = await client.create("ws-client", committed_bindings["src"], committed_bindings["dst"], ttl_seconds=60)
    assert TICKET.match(ticket.ticket)
    assert ticket.upload_url == ticket.download_url == f"https://gw.example.test/relay/{ticket.ticket}"
    assert timedelta(seconds=55) < ticket.expires_at - datetime.now(UTC) <= timedelta(seconds=60)
    url = f"{relay_gateway.base_url}/relay/{ticket.ticket}"
    source = random_file(tmp_path / "src", 100_000)
    get = Curl.get(url, ticket.ticket, tmp_path / "dst")
    assert Curl.put(url, ticket.ticket, source).result().status == 200
    assert get.result().status == 200
    assert sha256(tmp_path / "dst") == sha256(source)


async def test_relay_client_raises_with_the_status_and_body(relay_gateway, committed_bindings):
    client = RelayClient(relay_gateway.base_url + "/", settings.CXG_INTERNAL_SHARED_SECRET)
    with pytest.raises(RelayCreateError) as refused:
        await client.create("ws-client", committed_bindings["src"], "exe-elsewhere", ttl_seconds=60)
    assert refused.value.status == 403
    assert json.loads(refused.value.body) == {"error": "executor not in workspace: exe-elsewhere"}
    assert "HTTP 403" in str(refused.value)

    with pytest.raises(RelayCreateError) as unauthorized:
        await RelayClient(relay_gateway.base_url, "wrong").create("w", "a", "b", 60)
    assert unauthorized.value.status == 401

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(RelayCreateError) as unreachable:
        await RelayClient(f"http://127.0.0.1:{port}", "x").create("w", "a", "b", 60)
    assert unreachable.value.status is None
    assert "ConnectError" in unreachable.value.body


def test_relay_routes_are_503_while_redis_is_down(django_db_setup):
    gateway = GatewayProcess.start(env={**RELAY_ENV, "REDIS_URL": "redis://127.0.0.1:1/0"})
    try:
        ticket = relay_tickets.TICKET_PREFIX + "A" * 43
        for method in (["-X", "GET"], ["-X", "PUT", "--data-binary", "abc"]):
            result = run_curl(*auth(ticket), *method, f"{gateway.base_url}/relay/{ticket}")
            assert (result.status, result.json()) == (503, {"error": "service unavailable, retry later"})
    finally:
        gateway.terminate()
