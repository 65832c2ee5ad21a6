from django.urls import path

from appgateway.turns_views import TurnsView

urlpatterns = [path("api/turns", TurnsView.as_view())]
