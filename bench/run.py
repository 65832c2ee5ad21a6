"""``python -m bench.run``: the gateway against a direct connection to ``codex exec-server``, in
one run, printed as Markdown tables (see docs/performance.md).

Topology: one real exec-server listening on ws://127.0.0.1:0 for (a); a second real exec-server
connected with SigV4 to gateway process 0 of a two-process cluster (``manage.py serve`` + Redis channel layer)
for (b) bridges on process 0 and (c) bridges on process 1. Connection scale uses a fresh gateway
process per N, so its RSS growth is the connections' alone. The native section runs codex's
``exec_command`` from one ``codex app-server`` that has all three as environments (``bench/native_exec.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from bench.environment import BenchEnv, bench_environment
from bench.proc import CpuMeter
from bench.report import Fact, Row, comparison_table, facts_table, machine, median_row

REPO = Path(__file__).resolve().parents[1]
WORKSPACE = "ws-bench"
MiB = 1024 * 1024
T = TypeVar("T")
SECTIONS = ("latency", "throughput", "concurrency", "relay", "idle", "app", "native")


@dataclass
class Sizes:
    calls: int = 2000
    read_mib: int = 8
    read_repeats: int = 5
    stream_mib: int = 64
    clients: int = 50
    calls_each: int = 100
    idle: list[int] = field(default_factory=lambda: [1000, 5000])
    relay_mib: int = 256
    app_calls: int = 2000
    native_calls: int = 100
    rounds: int = 1


TINY = Sizes(
    calls=20,
    read_mib=1,
    read_repeats=1,
    stream_mib=1,
    clients=3,
    calls_each=5,
    idle=[5],
    relay_mib=2,
    app_calls=20,
    native_calls=3,
)


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def codex_bin() -> Path:
    found = sorted((REPO / "node_modules" / "@openai").glob("codex-linux-*/vendor/*/bin/codex"))
    if not found:
        raise SystemExit("the pinned @openai/codex package is not installed (scripts/test runs npm ci)")
    return found[0]


@contextlib.contextmanager
def profiled(directory: Path | None, name: str, pids: list[int]) -> Iterator[None]:
    """``py-spy record`` (collapsed stacks) on ``pids`` while the block runs, if asked for."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if directory is None or spy is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    recorders = [
        subprocess.Popen(  # noqa: S603 - py-spy from the venv or PATH, arguments are ours
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "200",
                "--nonblocking",
                "-o",
                str(directory / f"{name}-{pid}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]
    time.sleep(1)  # py-spy attaches before the measured work starts
    try:
        yield
    finally:
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)
        for recorder in recorders:
            with contextlib.suppress(subprocess.TimeoutExpired):
                recorder.wait(30)


def run(sizes: Sizes, sections: set[str], profile_dir: Path | None, results: Results) -> None:
    # Imported after bench_environment() configured Django.
    from django.conf import settings

    from bench import appgw, bare_relay, idle, native_exec, relay, rpc
    from executors import captoken, services
    from executors.presence import presence_store
    from tests.e2e.harness import ExecServer, ExecutorCredentials, GatewayCluster, GatewayProcess, wait_for

    binary = codex_bin()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="codexgw-bench-")))
        small = tmp / "small.txt"
        small.write_text("hello bench\n")
        big = relay.random_file(tmp / "read.bin", sizes.read_mib * MiB)

        direct_home, remote_home = tmp / "home-direct", tmp / "home-remote"
        direct = ExecServer.listen(binary, direct_home)
        stack.callback(direct.stop)
        cluster = GatewayCluster.start(2, env=relay.RELAY_ENV)
        stack.callback(cluster.stop)
        created = services.register_executor("user-bench", "bench executor")
        creds = ExecutorCredentials(created.executor.exe_id, created.registration_token)
        services.bind_executor(WORKSPACE, creds.exe_id, "bench", "", True)
        remote = ExecServer.remote(binary, cluster[0].base_url, creds, remote_home)
        stack.callback(remote.stop)
        if not wait_for(lambda: presence_store().get(creds.exe_id) is not None, 30):
            raise RuntimeError(f"executor did not come online\n{remote.log()}\n{cluster.log()}")

        token = captoken.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id="trn_bench", workspace_id=WORKSPACE, ttl=7200)
        bearer = {"Authorization": f"Bearer {token}"}
        a = rpc.Target("direct", direct.listen_url, {})
        b = rpc.Target("same", f"{cluster[0].ws_base_url}/bridge/{creds.exe_id}", bearer)
        c = rpc.Target("cross", f"{cluster[1].ws_base_url}/bridge/{creds.exe_id}", bearer)
        gateways = [g.pid for g in cluster]

        def in_rounds(
            name: str,
            measure: Callable[[rpc.Target], T],
            spied: Callable[[rpc.Target], list[int]],
            targets: tuple[rpc.Target, ...] = (a, b, c),
        ) -> list[list[T]]:
            """``measure`` on each target in turn, ``sizes.rounds`` times: [a, b, c] per round."""
            rounds = []
            for number in range(sizes.rounds):
                tag = f"-{number + 1}" if sizes.rounds > 1 else ""
                measured = []
                for target in targets:
                    with profiled(profile_dir, f"{name}-{target.label}{tag}", spied(target)):
                        measured.append(measure(target))
                rounds.append(measured)
            return rounds

        def bridges(target: rpc.Target) -> list[int]:
            return gateways if target is b or target is c else []

        # In the same rounds as (a), (b) and (c), the floor: a bare ASGI relay served as the gateway
        # is (bench/bare_relay.py).
        floor: rpc.Target | None = None
        floor_pids: list[int] = []
        if sections & {"latency", "throughput"}:
            floor_url, floor_pid = stack.enter_context(
                bare_relay.serving(direct.listen_url, settings.CXG_WS_PING_INTERVAL, settings.CXG_WS_PING_TIMEOUT)
            )
            floor, floor_pids = rpc.Target("floor", floor_url, {}), [floor_pid]
        floor_note = "(b) = a bare uvicorn ASGI relay, no gateway code; "

        if "latency" in sections:
            assert floor is not None
            lat = in_rounds(
                "latency", lambda t: asyncio.run(rpc.latency(t, small, sizes.calls)), bridges, (a, b, c, floor)
            )
            note = f"{sizes.calls} sequential calls, one connection"
            results.rows.append(median_row("fs/getMetadata p50", "ms", [[x.p50_ms for x in r[:3]] for r in lat], note))
            results.rows.append(median_row("fs/getMetadata p99", "ms", [[x.p99_ms for x in r[:3]] for r in lat], note))
            results.rows.append(
                median_row(
                    "fs/getMetadata p50, floor",
                    "ms",
                    [[r[0].p50_ms, r[3].p50_ms, None] for r in lat],
                    floor_note + note,
                )
            )

        if "throughput" in sections:

            def read_metered(target: rpc.Target) -> tuple[float, float]:
                """MB/s, and the gateways' CPU per read in ms."""
                meter = CpuMeter(gateways).start()
                rate = asyncio.run(rpc.read_file_mb_s(target, big, sizes.read_mib * MiB, sizes.read_repeats))
                return rate, sum(meter.stop().values()) / sizes.read_repeats * 1000

            assert floor is not None
            read = in_rounds("read", read_metered, bridges, (a, b, c, floor))
            note = f"{sizes.read_repeats} reads in a row, decoded bytes"
            name = f"fs/readFile {sizes.read_mib} MiB"
            results.rows.append(median_row(name, "MB/s", [[x[0] for x in r[:3]] for r in read], note))
            results.rows.append(
                median_row(f"{name}, floor", "MB/s", [[r[0][0], r[3][0], None] for r in read], floor_note + note)
            )
            cpu = [[None, r[1][1], r[2][1]] for r in read]
            results.rows.append(median_row(f"{name}: gateway CPU per read", "ms", cpu, "utime+stime, all processes"))

            def stream_metered(target: rpc.Target) -> tuple[float, float]:
                """MB/s, and the CPU per MiB of the processes between client and exec-server in ms."""
                meter = CpuMeter(floor_pids if target is floor else bridges(target)).start()
                rate = asyncio.run(rpc.stream_mb_s(target, sizes.stream_mib * MiB))
                return rate, sum(meter.stop().values()) / sizes.stream_mib * 1000

            stream = in_rounds("stream", stream_metered, bridges, (a, b, c, floor))
            note = "head -c N /dev/zero, start → process/closed, decoded bytes"
            name = f"process/output {sizes.stream_mib} MiB"
            results.rows.append(median_row(name, "MB/s", [[x[0] for x in r[:3]] for r in stream], note))
            results.rows.append(
                median_row(f"{name}, floor", "MB/s", [[r[0][0], r[3][0], None] for r in stream], floor_note + note)
            )
            cpu = [[None, r[1][1], r[2][1]] for r in stream]
            results.rows.append(median_row(f"{name}: gateway CPU per MiB", "ms", cpu, "utime+stime, all processes"))
            cpu = [[None, r[3][1], None] for r in stream]
            results.rows.append(median_row(f"{name}: floor CPU per MiB", "ms", cpu, floor_note + "utime+stime"))

        if "concurrency" in sections:
            # CPU is read for exec-server and the gateways; the profile is of the gateways.
            def metered(target: rpc.Target) -> list[int]:
                return [direct.process.pid] if target is a else [remote.process.pid, *gateways]

            conc = in_rounds(
                "concurrency",
                lambda t: asyncio.run(rpc.concurrency(t, small, sizes.clients, sizes.calls_each, metered(t))),
                lambda t: metered(t)[1:],
            )
            note = f"{sizes.clients} clients x {sizes.calls_each} sequential fs/getMetadata"
            rate = [[x.requests_per_s for x in r] for r in conc]
            results.rows.append(median_row("concurrent requests/s", "req/s", rate, note))
            results.rows.append(median_row("concurrent p99", "ms", [[x.p99_ms for x in r] for r in conc], note))
            execs = [direct.process.pid, remote.process.pid, remote.process.pid]
            exec_cpu = [[x.cpu_us_per_request[pid] for x, pid in zip(r, execs, strict=True)] for r in conc]
            results.rows.append(median_row("exec-server CPU per request", "µs", exec_cpu, "utime+stime from /proc"))
            for index, pid in enumerate(gateways):
                role = "executor + bridges in (b)" if index == 0 else "bridges in (c)"
                cpu = [[None, r[1].cpu_us_per_request[pid], r[2].cpu_us_per_request[pid]] for r in conc]
                results.rows.append(median_row(f"gateway process {index} CPU per request", "µs", cpu, role))

        if "relay" in sections:
            pair = relay.bound_pair(WORKSPACE)
            source = relay.random_file(tmp / "relay.bin", sizes.relay_mib * MiB)
            # A process's first relay loads code and sizes buffers once (about 2 MiB): measured
            # apart, so the measured relay shows what the relay's size costs.
            first = relay.random_file(tmp / "first.bin", MiB)
            warm = relay.relay(cluster[0].base_url, cluster[1].base_url, gateways, WORKSPACE, pair, first)
            with profiled(profile_dir, "relay", gateways):
                moved = relay.relay(cluster[0].base_url, cluster[1].base_url, gateways, WORKSPACE, pair, source)
            results.facts.append(
                Fact(
                    f"relay {sizes.relay_mib} MiB PUT (process 0) → GET (process 1)",
                    f"{moved.mb_s:.0f} MB/s",
                    "curl both sides, GET to /dev/null",
                )
            )
            for index, pid in enumerate(gateways):
                results.facts.append(
                    Fact(
                        f"relay: gateway process {index} peak RSS",
                        f"{moved.peak_rss_mib[pid]:.0f} MiB",
                        f"+{moved.growth_mib[pid]:.1f} MiB over its RSS before the relay"
                        f" (a first relay of 1 MiB before it: +{warm.growth_mib[pid]:.1f} MiB)",
                    )
                )

        if "idle" in sections and sizes.idle:
            everyone = idle.register(max(sizes.idle))
            for count in sizes.idle:
                gateway = GatewayProcess.start(name=f"idle-{count}")
                try:
                    scale = asyncio.run(idle.hold_idle(gateway.host_port, gateway.pid, everyone[:count]))
                finally:
                    gateway.terminate(30)
                results.facts.extend(
                    [
                        Fact(
                            f"{count} idle executors: time to accept all",
                            f"{scale.accept_s:.1f} s",
                            f"SigV4 upgrade + initialize, {idle.CONNECT_PARALLELISM} at a time",
                        ),
                        Fact(
                            f"{count} idle executors: presence online",
                            f"{scale.online}/{count}",
                            f"all listed after {scale.presence_s:.1f} s",
                        ),
                        Fact(
                            f"{count} idle executors: gateway RSS per connection",
                            f"{scale.rss_per_connection_kib:.0f} KiB",
                            f"+{scale.rss_growth_mib:.0f} MiB in total",
                        ),
                    ]
                )

        if "app" in sections:
            app = appgw.run(binary, tmp, sizes.app_calls)
            results.facts.extend(
                [
                    Fact(
                        "app gateway: TUI connect → initialize reply, cold workspace",
                        f"{app.cold_s:.2f} s",
                        "includes spawning codex app-server",
                    ),
                    Fact(
                        "app gateway: TUI connect → initialize reply, warm workspace",
                        f"{app.warm_s * 1000:.0f} ms",
                        "median of 5",
                    ),
                ]
            )
            note = f"{app.calls} sequential calls; (b) = through the gateway's TUI proxy"
            results.rows.append(
                Row("app-server account/read p50", "ms", [app.direct_p50_ms, app.proxied_p50_ms, None], note)
            )
            results.rows.append(
                Row("app-server account/read p99", "ms", [app.direct_p99_ms, app.proxied_p99_ms, None], note)
            )

        if "native" in sections:
            places = [native_exec.Place(a.label, direct.listen_url, direct_home)] + [
                native_exec.bridge(t.label, g.ws_base_url, WORKSPACE, creds.exe_id, remote_home)
                for t, g in ((b, cluster[0]), (c, cluster[1]))
            ]
            native = native_exec.run(tmp, places, sizes.native_calls)
            results.rows.extend(native.rows)
            results.facts.extend(native.facts)


def parse(argv: list[str] | None) -> tuple[Sizes, set[str], Path | None, Path | None]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description="Gateway vs direct exec-server benchmarks."
    )
    defaults = Sizes()
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (smoke test, development)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--calls", type=int, default=defaults.calls)
    parser.add_argument("--read-mib", type=int, default=defaults.read_mib)
    parser.add_argument("--read-repeats", type=int, default=defaults.read_repeats)
    parser.add_argument("--stream-mib", type=int, default=defaults.stream_mib)
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--calls-each", type=int, default=defaults.calls_each)
    parser.add_argument("--idle", default=",".join(map(str, defaults.idle)), help="idle executor counts")
    parser.add_argument("--relay-mib", type=int, default=defaults.relay_mib)
    parser.add_argument("--app-calls", type=int, default=defaults.app_calls)
    parser.add_argument("--native-calls", type=int, default=defaults.native_calls)
    parser.add_argument(
        "--rounds", type=int, default=defaults.rounds, help="latency, throughput, concurrency: medians of N rounds"
    )
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR", help="py-spy profiles go here")
    parser.add_argument("--output", type=Path, default=None, help="also write the tables to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    # Every size has an option of the same name (``--read-mib`` → read_mib); idle is a list.
    counts = {f.name: getattr(args, f.name) for f in fields(Sizes) if f.name != "idle"}
    sizes = Sizes(**counts, idle=[int(n) for n in args.idle.split(",") if n.strip()])
    if args.tiny:
        sizes = replace(TINY, rounds=args.rounds)
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return sizes, sections, args.py_spy, args.output


def render(results: Results, env: BenchEnv, command: str, elapsed: float) -> str:
    parts = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; nofile limit {env.fd_limit}; {elapsed:.0f} s.",
        f"Command: `{command}`",
    ]
    if results.rows:
        parts.append(comparison_table(results.rows))
    if results.facts:
        parts.append(facts_table(results.facts))
    parts.extend(f"Not measured: {what}" for what in results.missing)
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    sizes, sections, profile_dir, output = parse(argv)
    command = "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv)
    results = Results()
    started = time.monotonic()
    with bench_environment() as env:
        run(sizes, sections, profile_dir, results)
        text = render(results, env, command.strip(), time.monotonic() - started)
    print(text)
    if output is not None:
        output.write_text(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
