"""``read_file`` and ``write_file``, and the block-wise file access ``copy_path`` shares.

Ranges are read with exec-server's streaming file API (``fs/open`` + ``fs/readBlock``, at most
1 MiB a block), so a slice of a large file costs only that slice. Block reads and writes address
an offset, which makes them safe to retry after the executor reconnects.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import posixpath
import uuid
from types import TracebackType
from typing import Literal

from bridge.client import BridgeClient, BridgeError, BridgeRPCError
from sdk.tools.base import (
    JSON,
    ToolContext,
    ToolError,
    ToolResult,
    arg_bool,
    arg_int,
    arg_path,
    arg_str,
    environment,
    file_uri,
    tool_errors,
)

BLOCK = 1024 * 1024  # exec-server's largest fs/readBlock and fs/writeBlock
MAX_READ_BYTES = 8 * 1024 * 1024
# fs/writeFile sends the file base64 in one message; exec-server takes frames up to 16 MiB.
MAX_WRITE_BYTES = 8 * 1024 * 1024
FS_TIMEOUT = 60.0
FS_NOT_FOUND = -32004  # exec-server's code for a missing path or handle


def fs_failure(error: BridgeRPCError, path: str) -> ToolError:
    return ToolError(f"{path}: {error.message}")


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
        try:
            await self.client.call("fs/open", params, FS_TIMEOUT)
        except BridgeRPCError as error:
            raise fs_failure(error, self.path) from None
        return self

    async def read(self, offset: int, length: int) -> tuple[bytes, bool]:
        """Up to ``length`` (≤ ``BLOCK``) bytes at ``offset`` and whether the end was reached."""
        params = {"handleId": self.handle_id, "offset": offset, "len": length}
        try:
            result = await self.client.call("fs/readBlock", params, FS_TIMEOUT, idempotent=True)
        except BridgeRPCError as error:
            raise fs_failure(error, self.path) from None
        return base64.b64decode(result.get("chunk") or ""), bool(result.get("eof"))

    async def write(self, offset: int, data: bytes) -> None:
        params = {"handleId": self.handle_id, "offset": offset, "chunk": base64.b64encode(data).decode()}
        try:
            await self.client.call("fs/writeBlock", params, FS_TIMEOUT, idempotent=True)
        except BridgeRPCError as error:
            raise fs_failure(error, self.path) from None

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


@tool_errors
async def read_file(ctx: ToolContext, arguments: JSON) -> ToolResult:
    path = arg_path(arguments, "path")
    offset = arg_int(arguments, "offset", 0)
    limit = arg_int(arguments, "limit", 0, maximum=MAX_READ_BYTES) or MAX_READ_BYTES
    env = await environment(ctx, arguments)
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


def _content(arguments: JSON) -> bytes:
    if ("content" in arguments) == ("content_base64" in arguments):
        raise ToolError("invalid arguments: give exactly one of content and content_base64")
    if "content" in arguments:
        return arg_str(arguments, "content", "").encode()
    try:
        return base64.b64decode(arg_str(arguments, "content_base64", ""), validate=True)
    except binascii.Error:
        raise ToolError("invalid arguments: content_base64 is not valid base64") from None


@tool_errors
async def write_file(ctx: ToolContext, arguments: JSON) -> ToolResult:
    path = arg_path(arguments, "path")
    data = _content(arguments)
    if len(data) > MAX_WRITE_BYTES:
        raise ToolError(f"content is {len(data)} bytes; write_file takes at most {MAX_WRITE_BYTES} (use copy_path)")
    create_parents = arg_bool(arguments, "create_parents")
    env = await environment(ctx, arguments)
    if create_parents:
        parent = posixpath.dirname(path)
        try:
            await env.client.call(
                "fs/createDirectory", {"path": file_uri(parent), "recursive": True}, FS_TIMEOUT, idempotent=True
            )
        except BridgeRPCError as error:
            raise fs_failure(error, parent) from None
    params = {"path": file_uri(path), "dataBase64": base64.b64encode(data).decode()}
    try:
        await env.client.call("fs/writeFile", params, FS_TIMEOUT, idempotent=True)
    except BridgeRPCError as error:
        hint = "" if create_parents else " (set create_parents to create missing directories)"
        raise ToolError(f"{path}: {error.message}{hint if error.code == FS_NOT_FOUND else ''}") from None
    return ToolResult.ok(f"wrote {len(data)} bytes to {path}", {"path": path, "bytes": len(data)})
