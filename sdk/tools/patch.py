"""The ``apply_patch`` tool: Codex's patch grammar, parsed and applied in the gateway, with the files
read and written on the executor through exec-server ``fs/*`` calls (codex-wire §A.6).

``apply_changes(client, changes, cwd=None)`` runs a parsed patch against a resolved executor (the
tool, ``apply_patch`` in ``sdk.tools.files``, parses the patch and resolves the executor first):
every failure is a result, never an exception. The
grammar and the text work, pure (``parse_patch``, ``apply_hunks``): ``sdk.tools.patch_text``.

Decisions (where Codex's own behaviour is loose or differs, this module's choice is stated):

* Applying is all or nothing against anything that can be checked first: the whole patch is
  parsed, every Update is read and applied in memory, every Delete/Add/Move target is checked with
  ``fs/getMetadata``, and only then is anything written. An I/O failure *during* the writes cannot
  be undone (there is no rollback); the result then says which files were written.
* Paths: absolute POSIX paths are used as they are (normalised lexically, sent as percent-encoded
  ``file://`` URIs). Relative paths are resolved against the optional ``cwd`` argument (itself
  absolute) and refused when there is none. A path may appear only once in a patch (sources and
  Move destinations together).
* Add File overwrites an existing file (as in Codex) and creates missing parent directories;
  an empty Add File creates an empty file. Delete File removes files only, never directories.
  An Update File with no hunks, an empty hunk and a hunk without '+'/'-' lines are errors.
* Move: ``fs/copy`` (so the new file keeps the old one's permissions), ``fs/writeFile`` of the new
  content, then ``fs/remove`` of the old path. A Move onto its own path is a plain update.
* A file's new content must fit one WebSocket frame as base64 (~12 MiB); a larger one is refused
  during validation rather than getting the bridge closed with 1009 halfway through the writes.
* The result has one line per file, ``<path>: ok`` or ``<path>: error: <message>`` (a Move is
  labelled ``<path> -> <new path>``), and structuredContent ``{applied, files: [{path, ok, error?}]}``.
  A parse error is a single ``invalid patch: line N: …`` error result.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.client import BridgeRPCError
from bridge.protocol import MAX_FRAME_BYTES
from sdk.tools.base import ToolResult, file_uri
from sdk.tools.patch_hunks import apply_hunks
from sdk.tools.patch_text import AddFile, DeleteFile, FileChange, PatchError, UpdateFile

JSON = dict[str, Any]


class BridgeCaller(Protocol):
    """The one method this module needs from ``bridge.client.BridgeClient`` (which satisfies this
    structurally); tests pass fakes. ``call`` returns the JSON-RPC ``result`` or raises
    ``BridgeRPCError`` (or another ``BridgeError``)."""

    async def call(
        self,
        method: str,
        params: JSON | None = ...,
        timeout: float = ...,  # noqa: ASYNC109
        *,
        idempotent: bool = ...,
    ) -> Any: ...


FS_TIMEOUT = 60.0  # seconds per fs/* call
PLAN_CONCURRENCY = 8  # reads and metadata checks in flight at once
NOT_FOUND = -32004  # exec-server: "No such file or directory"
# fs/writeFile sends the whole file, base64, in one WebSocket frame; a larger frame would get the
# bridge closed with 1009, so bigger contents are refused before anything is written.
MAX_WRITE_BASE64 = MAX_FRAME_BYTES - 64 * 1024

# --- paths -------------------------------------------------------------------------------------


def resolve_path(path: str, cwd: str | None = None) -> str:
    """An absolute, lexically normalised POSIX path; ``ValueError`` for a relative one without ``cwd``."""
    if not posixpath.isabs(path):
        if cwd is None:
            raise ValueError(
                f"relative path {path!r}: use an absolute path (or pass 'cwd' to resolve relative paths against)"
            )
        path = posixpath.join(cwd, path)
    normalised = posixpath.normpath(path)
    return "/" + normalised.lstrip("/")


async def apply_changes(client: BridgeCaller, changes: Sequence[FileChange], *, cwd: str | None = None) -> ToolResult:
    """Validate every change (reads, in-memory application, metadata checks) and, only if all of them
    validate, write them in patch order. Never raises for a failure of the patch or the executor."""
    plans: list[_Plan | None] = [None] * len(changes)
    work: list[tuple[int, str, FileChange, str, str | None]] = []
    seen: dict[str, str] = {}
    for index, change in enumerate(changes):
        move_to = change.move_to if isinstance(change, UpdateFile) else None
        label = f"{change.path} -> {move_to}" if move_to is not None else change.path
        try:
            source = resolve_path(change.path, cwd)
            destination = resolve_path(move_to, cwd) if move_to is not None else None
        except ValueError as problem:
            plans[index] = _Plan(label, error=str(problem))
            continue
        if destination == source:
            destination = None  # a Move onto itself is a plain update
        touched = [source] if destination is None else [source, destination]
        clash = next((path for path in touched if path in seen), None)
        if clash is not None:
            plans[index] = _Plan(label, error=f"{clash} is already changed by {seen[clash]!r} in this patch")
            continue
        seen.update(dict.fromkeys(touched, label))
        work.append((index, label, change, source, destination))

    limit = asyncio.Semaphore(PLAN_CONCURRENCY)

    async def plan(index: int, label: str, change: FileChange, source: str, destination: str | None) -> None:
        async with limit:
            plans[index] = await _plan(client, label, change, source, destination)

    await asyncio.gather(*(plan(*item) for item in work))
    ready = [item for item in plans if item is not None]

    if any(item.error is not None for item in ready):
        return _result([(item.label, item.error or NOT_APPLIED_INVALID) for item in ready], applied=False)

    outcomes: list[tuple[str, str | None]] = []
    failed = False
    for item in ready:
        outcome = NOT_APPLIED_AFTER_FAILURE if failed else await _execute(client, item.ops)
        failed = outcome is not None
        outcomes.append((item.label, outcome))
    return _result(outcomes, applied=not failed)


NOT_APPLIED_INVALID = "not applied (another file of the patch failed; nothing was written)"
NOT_APPLIED_AFTER_FAILURE = "not applied (writing an earlier file of the patch failed)"


def _result(outcomes: Sequence[tuple[str, str | None]], *, applied: bool) -> ToolResult:
    """One line per file, ``<path>: ok`` or ``<path>: error: <message>``; structuredContent
    ``{applied, files: [{path, ok, error?}]}``."""
    lines = [f"{label}: ok" if problem is None else f"{label}: error: {problem}" for label, problem in outcomes]
    files = [
        {"path": label, "ok": problem is None, **({"error": problem} if problem is not None else {})}
        for label, problem in outcomes
    ]
    is_error = any(problem is not None for _, problem in outcomes)
    return ToolResult("\n".join(lines), is_error, {"applied": applied, "files": files})


@dataclass
class _Op:
    method: str
    params: JSON
    idempotent: bool = True  # safe to repeat if the executor's connection dropped mid-call


@dataclass
class _Plan:
    """One file of the patch: its label in the result and the calls that apply it (or why not)."""

    label: str
    ops: list[_Op] = field(default_factory=list)
    error: str | None = None


async def _execute(client: BridgeCaller, ops: Sequence[_Op]) -> str | None:
    for op in ops:
        try:
            await client.call(op.method, op.params, FS_TIMEOUT, idempotent=op.idempotent)
        except Exception as problem:
            return f"{op.method} failed: {_describe(problem)}"
    return None


async def _plan(client: BridgeCaller, label: str, change: FileChange, source: str, destination: str | None) -> _Plan:
    """Read, apply and check one file; ``destination`` is set for a Move to another path."""
    try:
        if isinstance(change, AddFile):
            await _refuse_directory(client, source)
            ops = [*_mkdir_parent(source), _write(source, change.content.encode("utf-8"))]
        elif isinstance(change, DeleteFile):
            metadata = await _metadata(client, source)
            if metadata is None:
                raise PatchError(f"no such file: {source}")
            if metadata.get("isDirectory"):
                raise PatchError(f"{source} is a directory (Delete File removes files only)")
            ops = [_remove(source)]
        else:
            original = await _read(client, source)
            updated = apply_hunks(original, change.hunks, change.path)
            data = updated.encode("utf-8", errors="surrogateescape")
            if destination is None:
                ops = [_write(source, data)]
            else:
                await _refuse_directory(client, destination)
                copy = {"sourcePath": file_uri(source), "destinationPath": file_uri(destination), "recursive": False}
                ops = [*_mkdir_parent(destination), _Op("fs/copy", copy), _write(destination, data), _remove(source)]
    except PatchError as problem:
        return _Plan(label, error=str(problem))
    except UnicodeEncodeError:
        return _Plan(label, error="the patch contains text that is not valid Unicode (a lone surrogate)")
    except Exception as problem:
        return _Plan(label, error=_describe(problem))
    return _Plan(label, ops)


def _write(path: str, data: bytes) -> _Op:
    encoded = base64.b64encode(data).decode("ascii")
    if len(encoded) > MAX_WRITE_BASE64:
        raise PatchError(
            f"the new content of {path} is {len(data)} bytes: too large for one fs/writeFile "
            f"(at most {MAX_WRITE_BASE64 * 3 // 4} bytes)"
        )
    return _Op("fs/writeFile", {"path": file_uri(path), "dataBase64": encoded})


def _remove(path: str) -> _Op:
    # Not idempotent: a repeat after a lost answer would fail on the file the first one removed.
    return _Op("fs/remove", {"path": file_uri(path), "recursive": False, "force": False}, idempotent=False)


def _mkdir_parent(path: str) -> list[_Op]:
    parent = posixpath.dirname(path)
    if parent in ("", "/"):
        return []
    return [_Op("fs/createDirectory", {"path": file_uri(parent), "recursive": True})]


async def _metadata(client: BridgeCaller, path: str) -> JSON | None:
    """``fs/getMetadata``, or None when nothing is at ``path``."""
    try:
        result = await client.call("fs/getMetadata", {"path": file_uri(path)}, FS_TIMEOUT, idempotent=True)
    except BridgeRPCError as problem:
        if problem.code == NOT_FOUND:
            return None
        raise
    return result if isinstance(result, dict) else {}


async def _refuse_directory(client: BridgeCaller, path: str) -> None:
    metadata = await _metadata(client, path)
    if metadata is not None and metadata.get("isDirectory"):
        raise PatchError(f"{path} is a directory")


async def _read(client: BridgeCaller, path: str) -> str:
    try:
        result = await client.call("fs/readFile", {"path": file_uri(path)}, FS_TIMEOUT, idempotent=True)
    except BridgeRPCError as problem:
        if problem.code == NOT_FOUND:
            raise PatchError(f"no such file: {path} (Update File changes an existing file)") from problem
        raise
    encoded = result.get("dataBase64") if isinstance(result, dict) else None
    if not isinstance(encoded, str):
        raise PatchError(f"fs/readFile of {path} returned no dataBase64")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as problem:
        raise PatchError(f"fs/readFile of {path} returned invalid base64") from problem
    return data.decode("utf-8", errors="surrogateescape")


def _describe(error: BaseException) -> str:
    """A one-line message for the model: the executor's own message for a JSON-RPC error."""
    if isinstance(error, BridgeRPCError):
        return f"{error.message} (code {error.code})"
    return str(error) or type(error).__name__
