from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings


class AppGatewayConfig(AppConfig):
    """Per-workspace codex app-server supervisor, TUI proxy, env-mcp and the turns broker."""

    name = "appgateway"

    def ready(self) -> None:
        from appgateway import auth, process_messages, spawn_builder, turns_auth
        from appgateway.supervisor import get_supervisor
        from codexgw import metrics
        from workspaces import identity

        supervisor = get_supervisor()
        process_messages.install(supervisor)
        spawn_builder.install(supervisor)
        identity.register_agentserver(identity.TUI, auth.TOKENS.grant)
        identity.register_agentserver(identity.TURNS, turns_auth.validate_for_identity)
        metrics.add_gauge(
            "codexgw_app_server_children",
            "Running codex app-server children of this process.",
            supervisor.local_child_count,
        )
        if "app" in settings.CODEXGW_ROLES:
            self._serve_app_role()

    def _serve_app_role(self) -> None:
        from appgateway import envmcp_auth, envmcp_http, model_credentials, model_proxy, relay, routing
        from codexgw import drain
        from codexgw import routing as gateway_routing

        relay.install()
        gateway_routing.add_websocket_routes(routing.websocket_urlpatterns)
        # The app-servers' model calls stream through the credential-swapping proxy.
        gateway_routing.add_http_app(model_credentials.PROXY_PATH, model_proxy.model_proxy_app)
        # env-mcp, the app-servers' MCP server, over streamable HTTP.
        gateway_routing.add_http_app(envmcp_auth.PATH_PREFIX, envmcp_http.env_mcp_app)
        # Stopping an app-server takes up to CXG_APP_SERVER_STOP_GRACE, then its CODEX_HOME is saved.
        drain.add_drain_step(
            "app-gateway", _close_tuis_and_stop_app_servers, order=30, reserve=settings.CXG_APP_SERVER_STOP_GRACE + 2.0
        )


async def _close_tuis_and_stop_app_servers(deadline: float) -> None:
    from appgateway import consumers
    from appgateway.supervisor import get_supervisor

    await consumers.close_all_tuis()
    await get_supervisor().shutdown_all("gateway draining")
