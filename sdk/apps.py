from django.apps import AppConfig


class SdkConfig(AppConfig):
    """The /api/connectors/* REST surface and the tool set shared with env-mcp."""

    name = "sdk"
