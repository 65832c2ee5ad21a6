"""Executor registry operations used by the REST views, the admin and the registration routes."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bcrypt
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from executors import captoken, secretbox
from executors.models import Executor, WorkspaceExecutor
from executors.presence import presence_store
from executors.revocation import revoked_set

# Compared against when the executor does not exist, so an unknown id costs the same bcrypt
# time as a wrong token and the two cannot be told apart.
_DUMMY_HASH = bcrypt.hashpw(b"codexgw-dummy-token", bcrypt.gensalt(rounds=10))
_UA = re.compile(r"^(?P<product>[\w.-]+)/(?P<version>[^\s/]+)(?:\s+\((?P<os>[^)]*)\))?")


class ExecutorNotFound(Exception):
    pass


class NameTaken(Exception):
    pass


@dataclass(frozen=True)
class NewExecutor:
    executor: Executor
    registration_token: str


def register_executor(user_id: str, display_name: str = "") -> NewExecutor:
    token = secrets.token_hex(32)
    executor = Executor.objects.create(
        user_id=user_id,
        display_name=display_name,
        registration_token_hash=bcrypt.hashpw(
            token.encode(), bcrypt.gensalt(rounds=settings.CXG_BCRYPT_ROUNDS)
        ).decode(),
        registration_token_encrypted=secretbox.encrypt(token),
    )
    return NewExecutor(executor=executor, registration_token=token)


def delete_executor(exe_id: str) -> None:
    Executor.objects.filter(exe_id=exe_id).delete()


def bind_executor(workspace_id: str, exe_id: str, name: str, description: str, is_default: bool) -> WorkspaceExecutor:
    """Create or update the (workspace, executor) binding."""
    if not Executor.objects.filter(exe_id=exe_id).exists():
        raise ExecutorNotFound(exe_id)
    try:
        with transaction.atomic():
            binding, _ = WorkspaceExecutor.objects.update_or_create(
                workspace_id=workspace_id,
                executor_id=exe_id,
                defaults={"name": name, "description": description, "is_default": is_default},
            )
    except IntegrityError:
        # Either the name is taken in this workspace or the executor vanished meanwhile.
        if not Executor.objects.filter(exe_id=exe_id).exists():
            raise ExecutorNotFound(exe_id) from None
        raise NameTaken(name) from None
    return binding


def unbind_executor(workspace_id: str, exe_id: str) -> None:
    WorkspaceExecutor.objects.filter(workspace_id=workspace_id, executor_id=exe_id).delete()


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def binding_json(binding: WorkspaceExecutor, online: set[str]) -> dict[str, Any]:
    """The reference's ConnectedExecutor shape; absent timestamps and metadata are omitted."""
    executor = binding.executor
    entry: dict[str, Any] = {
        "exe_id": executor.exe_id,
        "name": binding.name,
        "description": binding.description,
        "is_default": binding.is_default,
        "is_online": executor.exe_id in online,
    }
    for field in ("last_seen_at", "connected_at", "disconnected_at"):
        stamp = _iso(getattr(executor, field))
        if stamp:
            entry[field] = stamp
    for field, value in (
        ("display_name", executor.display_name),
        ("client_ip", executor.client_ip),
        ("client_ua", executor.client_ua),
        ("codex_version", executor.codex_version),
        ("os", executor.client_os),
    ):
        if value:
            entry[field] = value
    return entry


def list_bindings(workspace_id: str, *, online_only: bool = False) -> list[dict[str, Any]]:
    bindings = list(WorkspaceExecutor.objects.filter(workspace_id=workspace_id).select_related("executor"))
    online = presence_store().online(b.executor_id for b in bindings)
    return [binding_json(b, online) for b in bindings if not online_only or b.executor_id in online]


def reachable_bindings(workspace_id: str, token: captoken.CapPayload | None = None) -> list[dict[str, Any]]:
    """The workspace's bound executors that are online now, limited to what ``token`` (when
    given: a verified capability token of that workspace) may reach."""
    return [
        b for b in list_bindings(workspace_id, online_only=True) if token is None or token.allows_exe_id(b["exe_id"])
    ]


def verified_capability(presented: str) -> captoken.CapPayload:
    """A capability token checked as every route checks one: signature and expiry, and its turn
    not revoked. Raises ``captoken.CapTokenError`` (with the reason) otherwise."""
    token = captoken.verify(presented, settings.CXG_CAPTOKEN_HMAC_SECRET)
    if revoked_set().contains(token.turn_id):
        raise captoken.CapTokenError("turn revoked")
    return token


BCRYPT_MAX_BYTES = 72


def _storable(value: str) -> bool:
    """PostgreSQL text cannot hold NUL: such an id names no executor (and would raise DataError)."""
    return "\x00" not in value


def check_registration_token(exe_id: str, token: str) -> bool:
    """bcrypt check of a bearer registration token; unknown ids take the same time."""
    if not _storable(exe_id) or len(token.encode()) > BCRYPT_MAX_BYTES:
        # Not an executor id PostgreSQL could hold, or longer than any registration token (64
        # characters): bcrypt refuses inputs over 72 bytes with ValueError.
        return False
    stored = Executor.objects.filter(exe_id=exe_id).values_list("registration_token_hash", flat=True).first()
    candidate = stored.encode() if stored else _DUMMY_HASH
    return bcrypt.checkpw(token.encode(), candidate) and stored is not None


def registration_secret(exe_id: str) -> str | None:
    """The raw registration token (the SigV4 secret), or None for an unknown executor."""
    if not _storable(exe_id):
        return None
    encrypted = Executor.objects.filter(exe_id=exe_id).values_list("registration_token_encrypted", flat=True).first()
    return secretbox.decrypt(encrypted) if encrypted else None


@dataclass(frozen=True)
class ClientMeta:
    ip: str
    user_agent: str

    @property
    def codex_version(self) -> str:
        match = _UA.match(self.user_agent)
        return match.group("version") if match else ""

    @property
    def os(self) -> str:
        match = _UA.match(self.user_agent)
        return (match.group("os") or "") if match else ""


def client_meta(headers: dict[str, str], remote_addr: str) -> ClientMeta:
    """Client IP (first X-Forwarded-For hop, then X-Real-IP, then the peer) and user agent.
    ``headers`` is keyed by lower-case name."""
    forwarded = headers.get("x-forwarded-for", "").split(",")[0].strip()
    ip = forwarded or headers.get("x-real-ip", "").strip() or remote_addr
    return ClientMeta(ip=ip[:64], user_agent=headers.get("user-agent", "")[:512])


def _reported(version: Any, platform: Any) -> dict[str, str]:
    """The codex version and OS a source reported, leaving out what it did not report: codex sends
    no User-Agent, its version and OS then come from its initialize answer (record_environment),
    which a connection without one must not blank."""
    fields = {}
    if isinstance(version, str) and version:
        fields["codex_version"] = version[:64]
    if isinstance(platform, str) and platform:
        fields["client_os"] = platform[:255]
    return fields


def _meta_fields(meta: ClientMeta) -> dict[str, str]:
    return {"client_ip": meta.ip, "client_ua": meta.user_agent, **_reported(meta.codex_version, meta.os)}


def record_registration(exe_id: str, meta: ClientMeta) -> None:
    Executor.objects.filter(exe_id=exe_id).update(last_seen_at=timezone.now(), **_meta_fields(meta))


def record_connected(exe_id: str, meta: ClientMeta) -> None:
    now = timezone.now()
    Executor.objects.filter(exe_id=exe_id).update(
        connected_at=now, last_seen_at=now, disconnected_at=None, **_meta_fields(meta)
    )


def record_environment(exe_id: str, environment_info: Mapping[str, Any]) -> None:
    """The codex version and OS the executor's exec-server reports in its ``initialize`` answer
    (``environmentInfo.executorVersion`` and ``platformOs``, codex-wire §A.1)."""
    fields = _reported(environment_info.get("executorVersion"), environment_info.get("platformOs"))
    if fields:
        Executor.objects.filter(exe_id=exe_id).update(**fields)


def record_disconnected(exe_id: str) -> None:
    """Only the connection that still held the executor calls this (see presence.release), so
    an evicted connection never marks its successor offline. last_seen_at stays the time the
    executor was last known to be connected."""
    now = timezone.now()
    Executor.objects.filter(exe_id=exe_id).update(disconnected_at=now, last_seen_at=now)
