"""The soak's topologies, built from ``tests.e2e.harness``: a real ``codex exec-server`` dialling
real gateway processes on the bench's PostgreSQL database and Redis prefix, all on loopback.

* ``CutRig`` (scenario ``reconnect``): two processes; the executor dials process 0 through a
  ``TcpCutProxy``; bridges use process 1.
* ``FleetRig`` (``kill``, ``drain``): three processes behind haproxy (``Balancer``), the executor
  dialling the balancer; a process that was killed or drained is started again on its port.

Imported only after ``bench.environment.bench_environment()`` has set Django up.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from executors import captoken, services
from executors.presence import presence_store
from tests.e2e.harness import (
    Balancer,
    ExecServer,
    ExecutorCredentials,
    GatewayCluster,
    GatewayProcess,
    TcpCutProxy,
    wait_for,
)

WORKSPACE = "ws-soak"
GATEWAY_ENV = {
    "CODEXGW_LOG_FORMAT": "json",
    # haproxy checks /readyz every 500 ms: one check sees a draining process before it hands over.
    "CODEXGW_DRAIN_READINESS_DELAY": "1s",
    "CODEXGW_DRAIN_TIMEOUT": "10s",
}


def bearer() -> dict[str, str]:
    token = captoken.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, turn_id="trn_soak", workspace_id=WORKSPACE, ttl=7200)
    return {"Authorization": f"Bearer {token}"}


def register(name: str) -> ExecutorCredentials:
    created = services.register_executor("user-soak", name)
    services.bind_executor(WORKSPACE, created.executor.exe_id, name, "soak executor", False)
    return ExecutorCredentials(created.executor.exe_id, created.registration_token)


@dataclass
class Rig:
    """What every rig has: gateway processes (current and replaced), one executor, its logs."""

    credentials: ExecutorCredentials
    cluster: GatewayCluster
    executor: ExecServer
    retired: list[GatewayProcess] = field(default_factory=list)

    @property
    def exe_id(self) -> str:
        return self.credentials.exe_id

    def online(self) -> bool:
        return presence_store().get(self.exe_id) is not None

    def wait_online(self, timeout: float = 30.0) -> None:
        if not wait_for(self.online, timeout):
            raise RuntimeError(f"executor {self.exe_id} not online after {timeout}s\n{self.executor.log()[-4000:]}")

    def bridge_url(self, ws_base_url: str) -> str:
        return f"{ws_base_url}/bridge/{self.exe_id}"

    def gateways(self) -> list[GatewayProcess]:
        return [*self.retired, *self.cluster]

    def marks(self) -> dict[int, int]:
        """Where each gateway's and the executor's log stands now (by object id)."""
        marks = {id(g): len(g.output) for g in self.gateways()}
        marks[id(self.executor)] = len(self.executor.stderr_lines)
        return marks

    def save_logs(self, directory: Path, since: dict[int, int]) -> None:
        """Each gateway's and the executor's log lines written since ``since`` (whole logs of
        processes started after it), into ``directory``; processes that logged nothing are left out."""
        directory.mkdir(parents=True, exist_ok=True)
        for index, gateway in enumerate(self.gateways()):
            lines = gateway.output[since.get(id(gateway), 0) :]
            if not lines:
                continue  # a process replaced in an earlier run, or silent in this one
            name = gateway.name.replace("[", "").replace("]", "").replace("#", "-")
            (directory / f"{index:02d}-{name}-pid{gateway.pid}.log").write_text("".join(lines))
        executor_lines = self.executor.stderr_lines[since.get(id(self.executor), 0) :]
        (directory / "executor.log").write_text("".join(executor_lines))

    def stop(self) -> None:
        self.executor.stop()
        self.cluster.stop()


@dataclass
class CutRig(Rig):
    proxy: TcpCutProxy | None = None

    @classmethod
    def start(cls, binary: Path, work: Path) -> CutRig:
        credentials = register("soak-reconnect")
        cluster = GatewayCluster.start(2, env=GATEWAY_ENV)
        proxy = TcpCutProxy.to_url(cluster[0].base_url)
        executor = ExecServer.remote(binary, proxy.url("http"), credentials, work / "home-reconnect")
        rig = cls(credentials, cluster, executor, proxy=proxy)
        try:
            rig.wait_online()
        except BaseException:
            rig.stop()
            raise
        return rig

    def cut(self) -> int:
        assert self.proxy is not None
        return self.proxy.cut()

    def ready(self, timeout: float = 30.0) -> None:
        """The executor connected (through the proxy) and online again after a cut."""
        assert self.proxy is not None
        proxy = self.proxy
        if not wait_for(lambda: proxy.active_connections >= 1 and self.online(), timeout):
            raise RuntimeError(f"executor did not come back within {timeout}s")

    def stop(self) -> None:
        super().stop()
        if self.proxy is not None:
            self.proxy.stop()


@dataclass
class FleetRig(Rig):
    balancer: Balancer | None = None
    restarts: int = 0

    @classmethod
    def start(cls, binary: Path, work: Path, name: str) -> FleetRig:
        credentials = register(f"soak-{name}")
        cluster = GatewayCluster.start(3, env=GATEWAY_ENV)
        balancer: Balancer | None = None
        try:
            balancer = Balancer.start([g.base_url for g in cluster], work / f"haproxy-{name}")
            balancer.wait_for_states({f"g{i}": "UP" for i in range(3)}, 15)
        except BaseException:
            if balancer is not None:
                balancer.stop()
            cluster.stop()
            raise
        executor = ExecServer.remote(binary, balancer.base_url, credentials, work / f"home-{name}")
        rig = cls(credentials, cluster, executor, balancer=balancer)
        try:
            rig.wait_online()
        except BaseException:
            rig.stop()
            raise
        return rig

    @property
    def lb(self) -> Balancer:
        assert self.balancer is not None
        return self.balancer

    def holder_index(self, timeout: float = 30.0) -> int:
        """The process holding the executor: the one whose log names the connection in presence."""
        found: list[int] = []

        def look() -> bool:
            holder = presence_store().get(self.exe_id)
            if holder is None:
                return False
            for index, gateway in enumerate(self.cluster):
                if gateway.alive() and any(holder.connection_id in line for line in list(gateway.output)):
                    found.append(index)
                    return True
            return False

        if not wait_for(look, timeout, 0.1):
            raise RuntimeError(f"no live process holds executor {self.exe_id} after {timeout}s")
        return found[-1]

    def replace(self, index: int, timeout: float = 60.0) -> None:
        """Start process ``index`` again on its port (after it was killed or drained) and wait
        until haproxy has it UP."""
        old = self.cluster.processes[index]
        old.terminate(15)  # reaps it (SIGKILL after 15 s) and frees the port
        self.retired.append(old)
        self.restarts += 1
        port = old.port
        started = None
        deadline = time.monotonic() + timeout
        while started is None:
            try:
                started = GatewayProcess.start(env=GATEWAY_ENV, port=port, name=f"gateway[{index}]#{self.restarts}")
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)  # the port may still be in TIME_WAIT / not yet released
        self.cluster.processes[index] = started
        self.lb.wait_for_states({f"g{index}": "UP"}, 20)

    def stop(self) -> None:
        super().stop()
        for gateway in self.retired:
            with contextlib.suppress(Exception):
                gateway.terminate(5)
        if self.balancer is not None:
            self.balancer.stop()
