from __future__ import annotations

import asyncio

from django.apps import AppConfig
from django.conf import settings


class CodexgwConfig(AppConfig):
    """The ground floor: settings, the server, drain, metrics, health. It imports none of the apps;
    they add what it runs (drain steps, gauges, routes) in their own ``ready()``."""

    name = "codexgw"

    def ready(self) -> None:
        from codexgw import drain

        drain.add_drain_step("readiness", _readiness_delay, order=0)
        drain.add_drain_step("periodic", _stop_periodic, order=90)


async def _readiness_delay(deadline: float) -> None:
    # Load balancers see /readyz answer 503 and stop sending new connections here.
    await asyncio.sleep(settings.CODEXGW_DRAIN_READINESS_DELAY)


async def _stop_periodic(deadline: float) -> None:
    from codexgw import periodic

    periodic.stop_in_process_beat()
