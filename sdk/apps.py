from django.apps import AppConfig


class SdkConfig(AppConfig):
    """The /api/connectors/* REST surface and the tool set shared with env-mcp."""

    name = "sdk"

    def ready(self) -> None:
        from sdk import schema  # noqa: F401 - registers the OpenAPI extension
