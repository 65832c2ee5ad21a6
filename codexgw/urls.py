from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from codexgw import health, metrics

admin.site.site_header = "codexgw administration"
admin.site.site_title = "codexgw"
admin.site.index_title = "Gateway administration"

urlpatterns = [
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("metrics", metrics.metrics_view),
    path("admin/", admin.site.urls),
    path("api/schema", SpectacularAPIView.as_view(), name="openapi-schema"),
]
if "exec" in settings.CODEXGW_ROLES:
    urlpatterns.append(path("", include("executors.urls")))
    urlpatterns.append(path("", include("bridge.urls")))
    urlpatterns.append(path("", include("sdk.urls")))
if "app" in settings.CODEXGW_ROLES:
    urlpatterns.append(path("", include("appgateway.urls")))
