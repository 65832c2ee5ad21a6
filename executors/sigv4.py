"""Verification of the AWS Signature Version 4 that ``codex exec-server --aws-sigv4`` puts on its
registration POST and on its WebSocket upgrade (access key id = exe_id, secret = the executor's
registration token). Only the verification side, from the public SigV4 specification.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote, unquote_plus

ALGORITHM = "AWS4-HMAC-SHA256"
_AUTH_FIELD = re.compile(r"\s*(Credential|SignedHeaders|Signature)=([^,\s]+)\s*")
_SPACES = re.compile(r"\s+")
_UNRESERVED = "-_.~"


class SigV4Error(Exception):
    """The request is not correctly signed; ``str()`` says why (for logs, not for clients)."""


@dataclass(frozen=True)
class ParsedAuthorization:
    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> ParsedAuthorization:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise SigV4Error("not an AWS4-HMAC-SHA256 authorization")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        match = _AUTH_FIELD.fullmatch(part)
        if not match or match.group(1) in fields:
            raise SigV4Error("malformed authorization header")
        fields[match.group(1)] = match.group(2)
    if set(fields) != {"Credential", "SignedHeaders", "Signature"}:
        raise SigV4Error("authorization header lacks a field")
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope):
        raise SigV4Error("malformed credential scope")
    signed = tuple(fields["SignedHeaders"].split(";"))
    if list(signed) != sorted(signed) or any(h != h.lower() or not h for h in signed):
        raise SigV4Error("signed headers are not sorted lower-case names")
    return ParsedAuthorization(scope[0], scope[1], scope[2], scope[3], signed, fields["Signature"])


def _canonical_query(raw_query: str) -> str:
    """Each name and value decoded as the signer decoded it, then percent-encoded once and sorted.
    codex (Rust aws-sigv4) parses the query as form data, so a raw ``+`` is a space (``%20``)."""
    pairs = []
    for item in raw_query.split("&") if raw_query else []:
        name, _, value = item.partition("=")
        pairs.append((quote(unquote_plus(name), safe=_UNRESERVED), quote(unquote_plus(value), safe=_UNRESERVED)))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _canonical_paths(raw_path: str) -> list[str]:
    """The canonical URI as the signer may have built it: each segment percent-encoded once
    (the signer's view of the decoded path) or twice (the AWS default for non-S3 services)."""
    once = "/".join(quote(unquote(segment), safe=_UNRESERVED) for segment in raw_path.split("/")) or "/"
    twice = "/".join(quote(segment, safe=_UNRESERVED) for segment in once.split("/")) or "/"
    return [once] if once == twice else [once, twice]


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def verify(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    body: bytes,
    secret_for: Callable[[str], str | None],
    expected_access_key_id: str,
    max_skew: float,
    now: datetime | None = None,
) -> ParsedAuthorization:
    """Check the request's signature; raise ``SigV4Error`` unless it is valid and fresh.

    ``headers`` must be keyed by lower-case name. ``secret_for`` is only called once the
    request's shape is valid and its access key id is the expected one.
    """
    authorization = headers.get("authorization")
    if not authorization:
        raise SigV4Error("missing authorization header")
    parsed = parse_authorization(authorization)
    if not hmac.compare_digest(parsed.access_key_id.encode(), expected_access_key_id.encode()):
        raise SigV4Error("access key id does not name this executor")
    if "host" not in parsed.signed_headers or "x-amz-date" not in parsed.signed_headers:
        raise SigV4Error("host and x-amz-date must be signed")
    amz_date = headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise SigV4Error("missing or malformed x-amz-date") from None
    if parsed.date != amz_date[:8]:
        raise SigV4Error("credential date does not match x-amz-date")
    if abs(((now or datetime.now(UTC)) - signed_at).total_seconds()) > max_skew:
        raise SigV4Error("signature is outside the allowed clock skew")
    missing = [name for name in parsed.signed_headers if name not in headers]
    if missing:
        raise SigV4Error(f"signed header(s) absent: {', '.join(missing)}")
    secret = secret_for(parsed.access_key_id)
    if not secret:
        raise SigV4Error("unknown access key id")
    canonical_headers = "".join(f"{name}:{_SPACES.sub(' ', headers[name].strip())}\n" for name in parsed.signed_headers)
    scope = f"{parsed.date}/{parsed.region}/{parsed.service}/aws4_request"
    key = _signing_key(secret, parsed.date, parsed.region, parsed.service)
    body_hash = hashlib.sha256(body).hexdigest()
    for canonical_path in _canonical_paths(raw_path):
        canonical_request = "\n".join(
            [
                method.upper(),
                canonical_path,
                _canonical_query(raw_query),
                canonical_headers,
                ";".join(parsed.signed_headers),
                body_hash,
            ]
        )
        string_to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
        expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        # As bytes: compare_digest raises TypeError on a str with non-ASCII characters, and the
        # header's Signature field may hold any latin-1 character.
        if hmac.compare_digest(expected.encode(), parsed.signature.encode("utf-8", "surrogatepass")):
            return parsed
    raise SigV4Error("signature does not match")
