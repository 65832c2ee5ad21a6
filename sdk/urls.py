from django.urls import path

from sdk import views


def _routes(prefix: str, name_prefix: str) -> list:  # type: ignore[type-arg]
    return [
        path(f"{prefix}/envs/list", views.EnvsListView.as_view(), name=f"{name_prefix}-envs-list"),
        path(f"{prefix}/envs/<str:name>/tool/call", views.ToolCallView.as_view(), name=f"{name_prefix}-tool-call"),
        path(
            f"{prefix}/processes/<str:session_id>/stdin", views.SessionStdinView.as_view(), name=f"{name_prefix}-stdin"
        ),
        path(
            f"{prefix}/processes/<str:session_id>/output",
            views.SessionOutputView.as_view(),
            name=f"{name_prefix}-output",
        ),
        path(
            f"{prefix}/processes/<str:session_id>/terminate",
            views.SessionTerminateView.as_view(),
            name=f"{name_prefix}-terminate",
        ),
    ]


# /api/sdk/* was the first name of the same surface; clients of either keep working.
urlpatterns = _routes("api/connectors", "connectors") + _routes("api/sdk", "sdk")
