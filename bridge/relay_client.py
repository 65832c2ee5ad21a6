"""Client of ``POST /api/exec-gateway/relay/create`` for in-cluster callers (``copy_path``).

The caller then has the source executor run ``curl -f -H "Authorization: Bearer <ticket>"
--upload-file <file> <upload_url>`` and the destination ``curl -f -H … -o <tmp>
<download_url>``; a failed relay fails the download with an HTTP error or a broken transfer
(see docs/api.md, "Byte relay").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import httpx

TIMEOUT = 10.0


@dataclass(frozen=True)
class RelayTicket:
    ticket: str
    upload_url: str
    download_url: str
    expires_at: datetime


class RelayCreateError(Exception):
    """The gateway did not mint a ticket. ``status`` is None when it could not be reached."""

    def __init__(self, status: int | None, body: str) -> None:
        super().__init__(f"relay create failed: {f'HTTP {status}' if status is not None else 'no response'}: {body}")
        self.status = status
        self.body = body


class RelayClient:
    def __init__(self, internal_base_url: str, shared_secret: str) -> None:
        self._url = internal_base_url.rstrip("/") + "/api/exec-gateway/relay/create"
        self._headers = {"Authorization": f"Bearer {shared_secret}"}

    async def create(
        self, workspace_id: str, source_exe_id: str, dest_exe_id: str, ttl_seconds: int, max_bytes: int = 0
    ) -> RelayTicket:
        payload = {
            "workspace_id": workspace_id,
            "source_exe_id": source_exe_id,
            "dest_exe_id": dest_exe_id,
            "ttl_seconds": ttl_seconds,
            "max_bytes": max_bytes,
        }
        try:
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                response = await client.post(self._url, json=payload, headers=self._headers)
        except httpx.HTTPError as exc:
            raise RelayCreateError(None, f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != httpx.codes.CREATED:
            raise RelayCreateError(response.status_code, response.text)
        try:
            body = response.json()
            return RelayTicket(
                ticket=body["ticket"],
                upload_url=body["upload_url"],
                download_url=body["download_url"],
                expires_at=datetime.fromisoformat(body["expires_at"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise RelayCreateError(response.status_code, response.text) from exc
