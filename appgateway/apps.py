from django.apps import AppConfig


class AppGatewayConfig(AppConfig):
    """Per-workspace codex app-server supervisor, TUI proxy, env-mcp and the turns broker."""

    name = "appgateway"

    def ready(self) -> None:
        from appgateway import spawn_builder

        spawn_builder.install()
