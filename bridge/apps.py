from django.apps import AppConfig


class BridgeConfig(AppConfig):
    """Executor and bridge WebSocket consumers, the session multiplexer, the bridge client
    library and the byte relay (filled by the multiplexer and relay issues)."""

    name = "bridge"
