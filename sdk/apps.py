from django.apps import AppConfig


class SdkConfig(AppConfig):
    """The /api/connectors/* REST surface and the tool set shared with env-mcp."""

    name = "sdk"

    def ready(self) -> None:
        from sdk import auth, schema, service  # noqa: F401 - schema registers the OpenAPI extension
        from workspaces import identity

        identity.register_agentserver(identity.SDK, auth.TOKENS.grant)
        service.install()
