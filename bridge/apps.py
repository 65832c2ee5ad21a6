from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.conf import settings


class BridgeConfig(AppConfig):
    """Executor and bridge WebSocket consumers, the session multiplexer, the bridge client
    library, the byte relay and the transport between gateway processes."""

    name = "bridge"

    def ready(self) -> None:
        from django.db.models.signals import post_delete

        from bridge.ws_auth import close_bridges_of_access_tokens
        from codexgw import metrics
        from executors.models import WorkspaceExecutor
        from workspaces import tokens

        # Whichever process revokes a token (the admin's), the bridges are closed on every one.
        tokens.on_revoked(close_bridges_of_access_tokens)
        # Likewise when an executor leaves a workspace (unbound, or deleted with its bindings).
        post_delete.connect(_binding_deleted, sender=WorkspaceExecutor, dispatch_uid="bridge.binding_deleted")

        metrics.add_gauge(
            "codexgw_mux_pending_requests",
            "Bridge requests waiting for the executor's answer (held long-polls included), over this process's "
            "sessions.",
            _mux_pending,
        )
        metrics.add_gauge(
            "codexgw_mux_sessions", "Executor sessions (multiplexers) held by this process.", _mux_sessions
        )
        if "exec" in settings.CODEXGW_ROLES:
            self._serve_exec_role()

    def _serve_exec_role(self) -> None:
        from bridge import relay_views, routing
        from codexgw import drain
        from codexgw import routing as gateway_routing

        gateway_routing.add_websocket_routes(routing.websocket_urlpatterns)
        gateway_routing.add_http_app(relay_views.PATH_PREFIX, relay_views.relay_app)
        drain.add_drain_step("executors", _hand_over_sessions, order=10)
        drain.add_drain_step("relays", relay_views.in_flight.finish, order=20)


# apps.py is imported before the models are ready: these import bridge.session when called.


def _binding_deleted(sender: type, instance: Any, **kwargs: Any) -> None:
    from django.db import transaction

    from bridge.ws_auth import close_bridges_of_binding

    workspace_id, exe_id = instance.workspace_id, instance.executor_id
    transaction.on_commit(lambda: close_bridges_of_binding(workspace_id, exe_id))


def _mux_pending() -> float:
    from bridge import session

    return float(sum(live.mux.pending_count for live in session.live_sessions()))


def _mux_sessions() -> float:
    from bridge import session

    return float(len(session.live_sessions()))


async def _hand_over_sessions(deadline: float) -> None:
    from bridge import outbox, session

    await session.drain_all()
    await outbox.closes_sent()  # local bridges: their last frames, then the close
