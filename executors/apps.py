from django.apps import AppConfig


class ExecutorsConfig(AppConfig):
    """Executors, workspace bindings, registration, presence, capability tokens, revocation."""

    name = "executors"
