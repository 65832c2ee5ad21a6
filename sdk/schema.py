"""OpenAPI description of the SDK's authentication (drf-spectacular finds it on import)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ProxyTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "sdk.auth.ProxyTokenAuthentication"
    name = "proxyToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "The sandbox's proxy token (ProxyTokenAuth)."}
