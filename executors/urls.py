from django.urls import path, re_path

from executors import registration_views, views

# The reference router accepts the binding collection with and without a trailing slash.
urlpatterns = [
    path("api/codex-exec/register", views.RegisterExecutorView.as_view()),
    path("api/codex-exec/executors/<str:exe_id>", views.ExecutorDetailView.as_view()),
    re_path(r"^api/codex-exec/workspaces/(?P<workspace_id>[^/]+)/executors/?$", views.WorkspaceExecutorsView.as_view()),
    path(
        "api/codex-exec/workspaces/<str:workspace_id>/executors/<str:exe_id>",
        views.WorkspaceExecutorDetailView.as_view(),
    ),
    path("api/exec-gateway/connected", views.ConnectedView.as_view()),
    path("api/exec-gateway/revoke-turn", views.RevokeTurnView.as_view()),
    path("cloud/environment/<str:exe_id>/direct/register", registration_views.DirectRegisterView.as_view()),
    path("cloud/environment/<str:exe_id>/register", registration_views.BearerRegisterView.as_view()),
    path("cloud/executor/<str:exe_id>/register", registration_views.BearerRegisterView.as_view()),
]
