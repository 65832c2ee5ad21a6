"""``read_file``, ``write_file`` and ``apply_patch`` (``sdk.tools.patch``), and the block-wise file
access ``copy_path`` shares.

Ranges are read with exec-server's streaming file API (``fs/open`` + ``fs/readBlock``, at most
1 MiB a block), so a slice of a large file costs only that slice. Block reads and writes address
an offset, which makes them safe to retry after the executor reconnects.
"""

from __future__ import annotations

import base64
import contextlib
import posixpath
import uuid
from types import TracebackType
from typing import Annotated, Literal

from pydantic import Field, model_validator

from bridge.client import BridgeClient, BridgeError, BridgeRPCError
from sdk.tools.arguments import AbsolutePath, Arguments, Base64, Count, Cwd, EnvironmentId, Text, at_most, takes
from sdk.tools.base import JSON, ToolContext, ToolError, ToolResult, environment, file_uri
from sdk.tools.patch import apply_changes
from sdk.tools.patch_text import PatchParseError, parse_patch

BLOCK = 1024 * 1024  # exec-server's largest fs/readBlock and fs/writeBlock
MAX_READ_BYTES = 8 * 1024 * 1024
# fs/writeFile sends the file base64 in one message; exec-server takes frames up to 16 MiB.
MAX_WRITE_BYTES = 8 * 1024 * 1024
FS_TIMEOUT = 60.0
FS_NOT_FOUND = -32004  # exec-server's code for a missing path or handle


def fs_failure(error: BridgeRPCError, path: str) -> ToolError:
    return ToolError(f"{path}: {error.message}")


async def fs_call(client: BridgeClient, method: str, params: JSON, path: str, *, idempotent: bool = True) -> JSON:
    """An ``fs/*`` call about ``path``; the executor's refusal is a ``ToolError`` naming the path."""
    try:
        result: JSON = await client.call(method, params, FS_TIMEOUT, idempotent=idempotent)
    except BridgeRPCError as error:
        raise fs_failure(error, path) from None
    return result


async def lookup(client: BridgeClient, path: str) -> JSON | None:
    """``fs/getMetadata`` (``isFile``, ``isDirectory``, ``size``…), None if nothing is there."""
    try:
        result: JSON = await client.call("fs/getMetadata", {"path": file_uri(path)}, FS_TIMEOUT, idempotent=True)
    except BridgeRPCError as error:
        if error.code == FS_NOT_FOUND:
            return None
        raise fs_failure(error, path) from None
    return result


async def stat(client: BridgeClient, path: str) -> JSON:
    """``lookup`` of a path that must exist."""
    result = await lookup(client, path)
    if result is None:
        raise ToolError(f"{path}: no such file or directory")
    return result


class RemoteFile:
    """An open file on an executor (``async with``): ``read`` mode, or ``replace`` (created or
    truncated, then written at offsets)."""

    def __init__(self, client: BridgeClient, path: str, mode: Literal["read", "replace"]) -> None:
        self.client = client
        self.path = path
        self.mode = mode
        # exec-server takes handle ids up to 32 bytes, and the gateway prefixes 10 (docs/protocol.md).
        self.handle_id = f"fh{uuid.uuid4().hex[:16]}"

    async def __aenter__(self) -> RemoteFile:
        params = {"handleId": self.handle_id, "path": file_uri(self.path), "mode": self.mode}
        await fs_call(self.client, "fs/open", params, self.path, idempotent=False)
        return self

    async def read(self, offset: int, length: int) -> tuple[bytes, bool]:
        """Up to ``length`` (≤ ``BLOCK``) bytes at ``offset`` and whether the end was reached."""
        params = {"handleId": self.handle_id, "offset": offset, "len": length}
        result = await fs_call(self.client, "fs/readBlock", params, self.path)
        return base64.b64decode(result.get("chunk") or ""), bool(result.get("eof"))

    async def write(self, offset: int, data: bytes) -> None:
        params = {"handleId": self.handle_id, "offset": offset, "chunk": base64.b64encode(data).decode()}
        await fs_call(self.client, "fs/writeBlock", params, self.path)

    async def close(self) -> None:
        try:
            await self.client.call("fs/close", {"handleId": self.handle_id}, FS_TIMEOUT, idempotent=True)
        except BridgeRPCError as error:
            # Unknown handle: a retry after the first close went through.
            if error.code != FS_NOT_FOUND:
                raise fs_failure(error, self.path) from None

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            await self.close()  # a failed close of a written file is a failed write
        else:
            with contextlib.suppress(BridgeError, ToolError):
                await self.close()


PathField = Annotated[AbsolutePath, Field(description="Absolute path.")]


class ReadFileArguments(Arguments):
    environment_id: EnvironmentId
    path: PathField
    offset: Annotated[Count, Field(description="First byte to read. Default 0.")] = 0
    limit: Annotated[
        Count, Field(description="Bytes to read; 0 = to the end (8 MiB max)."), at_most(MAX_READ_BYTES)
    ] = 0


@takes(ReadFileArguments)
async def read_file(ctx: ToolContext, args: ReadFileArguments) -> ToolResult:
    path, offset, limit = args.path, args.offset, args.limit or MAX_READ_BYTES
    env = await environment(ctx, args.environment_id)
    meta = await stat(env.client, path)
    if meta.get("isDirectory"):
        raise ToolError(f"{path} is a directory")
    size = int(meta.get("size") or 0)
    end = min(size, offset + limit)
    data = bytearray()
    if offset < end:
        async with RemoteFile(env.client, path, "read") as remote:
            while offset + len(data) < end:
                chunk, eof = await remote.read(offset + len(data), min(BLOCK, end - offset - len(data)))
                data += chunk
                if eof or not chunk:
                    break
    structured: JSON = {"path": path, "size": size, "offset": offset, "length": len(data)}
    structured["truncated"] = offset + len(data) < size
    try:
        text = data.decode("utf-8")
        structured["encoding"] = "utf-8"
    except UnicodeDecodeError:
        text = base64.b64encode(data).decode()
        structured["encoding"] = "base64"
    return ToolResult.ok(text, structured)


class WriteFileArguments(Arguments):
    environment_id: EnvironmentId
    path: PathField
    content: Annotated[str | None, Field(description="Text content (UTF-8).")] = None
    content_base64: Annotated[Base64 | None, Field(description="Binary content, base64 (instead of content).")] = None
    create_parents: Annotated[bool, Field(description="Create missing parent directories.")] = False

    @model_validator(mode="after")
    def _one_content(self) -> WriteFileArguments:
        if (self.content is None) == (self.content_base64 is None):
            raise ValueError("give exactly one of content and content_base64")
        return self

    @property
    def data(self) -> bytes:
        return self.content.encode() if self.content is not None else base64.b64decode(self.content_base64 or "")


@takes(WriteFileArguments)
async def write_file(ctx: ToolContext, args: WriteFileArguments) -> ToolResult:
    path, data = args.path, args.data
    if len(data) > MAX_WRITE_BYTES:
        raise ToolError(f"content is {len(data)} bytes; write_file takes at most {MAX_WRITE_BYTES} (use copy_path)")
    env = await environment(ctx, args.environment_id)
    if args.create_parents:
        parent = posixpath.dirname(path)
        await fs_call(env.client, "fs/createDirectory", {"path": file_uri(parent), "recursive": True}, parent)
    params = {"path": file_uri(path), "dataBase64": base64.b64encode(data).decode()}
    try:
        await env.client.call("fs/writeFile", params, FS_TIMEOUT, idempotent=True)
    except BridgeRPCError as error:
        hint = "" if args.create_parents else " (set create_parents to create missing directories)"
        raise ToolError(f"{path}: {error.message}{hint if error.code == FS_NOT_FOUND else ''}") from None
    return ToolResult.ok(f"wrote {len(data)} bytes to {path}", {"path": path, "bytes": len(data)})


class ApplyPatchArguments(Arguments):
    environment_id: EnvironmentId
    patch: Annotated[Text, Field(description="The patch text.")]
    cwd: Annotated[Cwd, Field(description="Absolute directory that relative paths in the patch are in.")] = None


@takes(ApplyPatchArguments)
async def apply_patch(ctx: ToolContext, args: ApplyPatchArguments) -> ToolResult:
    try:
        changes = parse_patch(args.patch)
    except PatchParseError as error:
        return ToolResult.error(f"invalid patch: {error}")
    env = await environment(ctx, args.environment_id)
    return await apply_changes(env.client, changes, cwd=args.cwd)
