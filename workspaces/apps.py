from django.apps import AppConfig


class WorkspacesConfig(AppConfig):
    """The built-in control plane (workspaces, members, access tokens) and the identity interface
    every user-facing surface authenticates through."""

    name = "workspaces"
