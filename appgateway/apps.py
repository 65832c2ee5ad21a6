from django.apps import AppConfig


class AppGatewayConfig(AppConfig):
    """Per-workspace codex app-server supervisor, TUI proxy, env-mcp and the turns broker."""

    name = "appgateway"
