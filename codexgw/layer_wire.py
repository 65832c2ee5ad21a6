"""The wire of the channel layer's direct path (codexgw/layer_direct.py): frames and handshake.

A frame is ``<u32 length><u8 kind><body>`` (length counts kind and body). The payload of a DATA
frame is the layer's encoded message as it would be pushed to Redis (``<channel>\\n<msgpack>``),
so both paths queue the same bytes on the receiving side.

Handshake (the receiver proves it is the process the sender meant, the sender that it knows the
secret): receiver → HELLO(nonce, inbox); sender → AUTH(session, nonce', mac(nonce, inbox, session,
nonce')); receiver → WELCOME(mac(nonce', inbox)). The key is derived from the shared
secret; macs are compared in constant time and never logged. Every DATA frame is answered (in
batches) by an ACK: OK (queued) or FULL (the channel is at capacity; nothing was queued).

A Redis payload that a sender moved from a broken direct session to the Redis path carries the
session and sequence (``\\x00<session hex>:<seq>\\x00`` before the usual bytes), so the receiver
can drop it if the frame had arrived directly after all.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

HELLO, AUTH, WELCOME, DATA, ACKS = 1, 2, 3, 4, 5
OK, FULL = 1, 0

HEADER = struct.Struct(">IB")
DATA_HEAD = struct.Struct(">QQ")  # seq, lowest seq the sender still awaits a result for
ACK = struct.Struct(">QB")  # seq, OK or FULL
AUTH_HEAD = struct.Struct(">8s16s")  # session, sender's nonce; then the 32-byte mac
NONCE_BYTES = 16
MAC_BYTES = 32
PRE_AUTH_MAX = 256  # a frame before authentication is a handshake frame: small
FRAME_MAX = 1 << 30


def derive_key(secret: str) -> bytes:
    return hmac.new(secret.encode(), b"codexgw channel layer direct path v1", hashlib.sha256).digest()


def mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"\x00".join(parts), hashlib.sha256).digest()


def same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def frame(kind: int, *body: bytes) -> bytes:
    size = 1 + sum(len(part) for part in body)
    return b"".join((HEADER.pack(size, kind), *body))


def data_frame(seq: int, low: int, payload: bytes) -> list[bytes]:
    """A DATA frame as parts, for ``writelines`` (no copy of a large payload)."""
    return [HEADER.pack(1 + DATA_HEAD.size + len(payload), DATA) + DATA_HEAD.pack(seq, low), payload]


class FrameReader:
    """Splits a byte stream into frames; ``limit`` is raised once the peer is authenticated."""

    def __init__(self, limit: int = PRE_AUTH_MAX) -> None:
        self._buffer = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames: list[tuple[int, bytes]] = []
        start = 0
        buffer = self._buffer
        with memoryview(buffer) as view:  # one copy per frame, and released before the del below
            while len(buffer) - start >= HEADER.size:
                size, kind = HEADER.unpack_from(buffer, start)
                if size < 1 or size > self.limit:
                    raise ValueError(f"frame of {size} bytes")
                end = start + HEADER.size - 1 + size
                if end > len(buffer):
                    break
                frames.append((kind, bytes(view[start + HEADER.size : end])))
                start = end
        if start:
            del buffer[:start]
        return frames


def tag(session: bytes, seq: int, payload: bytes) -> bytes:
    return b"\x00" + session.hex().encode() + b":" + str(seq).encode() + b"\x00" + payload


def untag(payload: bytes) -> tuple[bytes, int, int] | None:
    """``(session, seq, offset of the untagged payload)`` of a tagged payload, else None."""
    if not payload.startswith(b"\x00"):
        return None
    end = payload.index(b"\x00", 1)
    session, _, seq = payload[1:end].partition(b":")
    return bytes.fromhex(session.decode()), int(seq), end + 1
