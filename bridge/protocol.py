"""Wire constants of the executor and bridge WebSockets (documented in docs/protocol.md)."""

from __future__ import annotations

from typing import Any

# The server's limits, named here too: the bridge's clients dial exec-servers with them.
from codexgw.websocket import MAX_FRAME_BYTES as MAX_FRAME_BYTES
from codexgw.websocket import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES

JSON = dict[str, Any]

# WebSocket close codes the gateway sends.
CLOSE_SERVICE_RESTART = 1012  # this gateway process is draining: reconnect (to another process) and resume
CLOSE_TRY_AGAIN = 1013  # the peer could not keep up: its channel stayed full
CLOSE_EXECUTOR_REPLACED = 4000  # a newer connection for the same executor took over
CLOSE_TURN_REVOKED = 4001  # the capability token's turn was revoked
CLOSE_EXECUTOR_LOST = 4002  # the executor's session is gone or moved to another process: reconnect
CLOSE_EXECUTOR_UNBOUND = 4003  # the executor is no longer bound to the credential's workspace

# JSON-RPC error codes the gateway answers with (exec-server's own codes where it has one).
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
SESSION_ATTACHED = -32010
EXECUTOR_UNAVAILABLE = -32000  # retryable: the executor connection dropped or is not there yet

# Client-chosen handles that live in the one shared exec-server session; the gateway namespaces
# them per virtual session (processId: process/*, handleId: fs/open…, watchId: fs/watchMissing,
# requestId: http/request).
HANDLE_KEYS = ("processId", "handleId", "watchId", "requestId")
PROCESS_EVENTS = ("process/output", "process/exited", "process/closed")

# Channel-layer messages above this size are split into parts (the Redis layer's safe size is
# well under its 1 MB hard limit once msgpack framing is added).
LAYER_CHUNK_CHARS = 256 * 1024

# exec-server keeps a detached session (and a closed process's output) for 80 s.
EXEC_SESSION_RETENTION = 80.0
