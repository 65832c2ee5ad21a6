from django.apps import AppConfig


class AppGatewayConfig(AppConfig):
    """Per-workspace codex app-server supervisor, TUI proxy, env-mcp and the turns broker."""

    name = "appgateway"

    def ready(self) -> None:
        from appgateway import auth, spawn_builder, turns_auth
        from workspaces import identity

        spawn_builder.install()
        identity.register_agentserver(identity.TUI, auth.verify_for_identity)
        identity.register_agentserver(identity.TURNS, turns_auth.validate_for_identity)
