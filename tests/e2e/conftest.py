"""Fixtures for end-to-end tests (see ``tests/e2e/harness.py``). ``gateway_server`` and
``codex_bin`` live in ``tests/conftest.py``."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from executors import services
from executors.presence import presence_store
from tests.appgateway.fake_model import FakeModel
from tests.e2e.harness import Balancer, ExecServer, ExecutorCredentials, GatewayCluster, TcpCutProxy, wait_for

DEFAULT_CLUSTER_SIZE = 2


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "gateway_cluster(count=2, env=None): size and extra environment of the gateway_cluster fixture",
    )


@pytest.fixture
def start_gateway_cluster(transactional_db: None) -> Iterator[Callable[..., GatewayCluster]]:
    """``start_gateway_cluster(count=2, env=None)``: more clusters, all stopped at teardown."""
    clusters: list[GatewayCluster] = []

    def start(count: int = DEFAULT_CLUSTER_SIZE, env: Mapping[str, str] | None = None) -> GatewayCluster:
        cluster = GatewayCluster.start(count, env=env)
        clusters.append(cluster)
        return cluster

    try:
        yield start
    finally:
        for cluster in clusters:
            cluster.stop()


@pytest.fixture
def gateway_cluster(
    request: pytest.FixtureRequest, start_gateway_cluster: Callable[..., GatewayCluster]
) -> GatewayCluster:
    """N real gateway processes (default 2) on the test database, Redis and prefix.

    Size: ``@pytest.mark.gateway_cluster(count=3)`` or
    ``@pytest.mark.parametrize("gateway_cluster", [3], indirect=True)``; extra environment:
    ``@pytest.mark.gateway_cluster(env={...})``.
    """
    marker = request.node.get_closest_marker("gateway_cluster")
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    if marker and marker.args:
        options.setdefault("count", marker.args[0])
    if hasattr(request, "param"):
        options["count"] = request.param
    return start_gateway_cluster(options.get("count", DEFAULT_CLUSTER_SIZE), options.get("env"))


@pytest.fixture
def make_executor_credentials(transactional_db: None) -> Callable[..., ExecutorCredentials]:
    """``make_executor_credentials(user_id="user-e2e", display_name="e2e executor")``: a new
    executor in the test database (committed, so gateway subprocesses see it)."""

    def make(user_id: str = "user-e2e", display_name: str = "e2e executor") -> ExecutorCredentials:
        created = services.register_executor(user_id, display_name)
        return ExecutorCredentials(exe_id=created.executor.exe_id, token=created.registration_token)

    return make


@pytest.fixture
def fake_model() -> Iterator[FakeModel]:
    """The LLM (a real HTTP server on 127.0.0.1 speaking the Responses API) with nothing scripted:
    a request past the script gets a reply that names itself."""
    with FakeModel(default_text="unexpected extra model request") as model:
        yield model


@pytest.fixture
def executor_credentials(make_executor_credentials: Callable[..., ExecutorCredentials]) -> ExecutorCredentials:
    return make_executor_credentials()


class ExecServers:
    """Starts real exec-servers, each with its own ``CODEX_HOME``; stops them all at teardown."""

    def __init__(self, codex_bin: Path, base_dir: Path) -> None:
        self.codex_bin = codex_bin
        self.base_dir = base_dir
        self.started: list[ExecServer] = []
        self._homes = itertools.count(1)

    def _home(self) -> Path:
        return self.base_dir / f"codex-home-{next(self._homes)}"

    def remote(self, base_url: str, credentials: ExecutorCredentials, **kwargs: Any) -> ExecServer:
        """``codex exec-server --remote base_url … --aws-sigv4`` (see ``ExecServer.remote``)."""
        server = ExecServer.remote(self.codex_bin, base_url, credentials, self._home(), **kwargs)
        self.started.append(server)
        return server

    def listen(self, **kwargs: Any) -> ExecServer:
        """``codex exec-server --listen ws://127.0.0.1:0`` (see ``ExecServer.listen``)."""
        server = ExecServer.listen(self.codex_bin, self._home(), **kwargs)
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def exec_servers(codex_bin: Path, tmp_path: Path) -> Iterator[ExecServers]:
    servers = ExecServers(codex_bin, tmp_path)
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture
def local_exec_server(exec_servers: ExecServers) -> ExecServer:
    """A real exec-server listening on ws://127.0.0.1:<ephemeral> (``.listen_url``), no gateway."""
    return exec_servers.listen()


@pytest.fixture
def tcp_proxies() -> Iterator[Callable[..., TcpCutProxy]]:
    """``tcp_proxies(host, port)`` or ``tcp_proxies(url)``: started proxies, stopped at teardown."""
    proxies: list[TcpCutProxy] = []

    def start(target: str, port: int | None = None) -> TcpCutProxy:
        proxy = TcpCutProxy.to_url(target) if port is None else TcpCutProxy(target, port).start()
        proxies.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in proxies:
            proxy.stop()


@pytest.fixture
def balancer(tmp_path: Path) -> Iterator[Callable[..., Balancer]]:
    """``balancer(cluster_or_urls)``: haproxy round-robin over the gateways (``Balancer``), with
    ``/readyz`` health checks; stopped at teardown."""
    started: list[Balancer] = []

    def start(targets: GatewayCluster | list[str]) -> Balancer:
        urls = [gateway.base_url for gateway in targets] if isinstance(targets, GatewayCluster) else targets
        started.append(Balancer.start(urls, tmp_path / f"haproxy-{len(started)}"))
        return started[-1]

    try:
        yield start
    finally:
        for each in started:
            each.stop()


@dataclass
class BoundExecutor:
    credentials: ExecutorCredentials
    server: ExecServer
    proxy: TcpCutProxy
    name: str

    @property
    def exe_id(self) -> str:
        return self.credentials.exe_id


@pytest.fixture
def bound_executors(
    request: pytest.FixtureRequest,
    make_executor_credentials: Callable[..., ExecutorCredentials],
    exec_servers: ExecServers,
    tcp_proxies: Callable[..., TcpCutProxy],
) -> Callable[..., BoundExecutor]:
    """``bound_executors(workspace, name, process=0, description="", is_default=False, cluster=None)``:
    a real exec-server bound to ``workspace`` as ``name``, connected to gateway process ``process``
    of ``cluster`` (default: the ``gateway_cluster`` fixture) through a cuttable TCP proxy, and
    online."""

    def start(
        workspace: str,
        name: str,
        process: int = 0,
        description: str = "",
        is_default: bool = False,
        cluster: GatewayCluster | None = None,
    ) -> BoundExecutor:
        gateways = cluster if cluster is not None else request.getfixturevalue("gateway_cluster")
        credentials = make_executor_credentials(display_name=name)
        services.bind_executor(workspace, credentials.exe_id, name, description, is_default)
        proxy = tcp_proxies(gateways[process].base_url)
        server = exec_servers.remote(proxy.url("http"), credentials)
        assert wait_for(lambda: presence_store().get(credentials.exe_id) is not None, 20), (
            f"executor {name} did not come online\n{server.log()}\n{gateways.log()}"
        )
        return BoundExecutor(credentials, server, proxy, name)

    return start
