"""``executors.sigv4.verify`` against a test-only signer (public SigV4 spec, shaped like what
``codex exec-server --aws-sigv4`` sends) and against requests captured from the real codex 0.169.0."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import pytest

from executors import sigv4
from executors.sigv4 import SigV4Error

AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_UNRESERVED = "-_.~"

EXE_ID = "exe_0b6f8a52-6f8e-4a2b-9b7e-3c1d2e4f5a6b"
SECRET = "registration-token-0123456789abcdef"
REGISTER_PATH = f"/cloud/environment/{EXE_ID}/direct/register"
REGISTER_BODY = b'{"transport":"direct_jsonrpc_v1"}'
NOW = datetime(2026, 11, 21, 19, 0, 39, tzinfo=UTC)


# --- test-only signer ------------------------------------------------------------------------


def amz_date(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(AMZ_DATE_FORMAT)


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def sign(
    *,
    method: str,
    path: str,
    headers: Mapping[str, str],
    access_key_id: str,
    secret: str,
    at: datetime,
    query: str = "",
    body: bytes = b"",
    region: str = "us-east-1",
    service: str = "execute-api",
    session_token: str | None = None,
    signed_headers: list[str] | None = None,
    credential_date: str | None = None,
    double_encode_path: bool = True,
) -> dict[str, str]:
    """Return ``headers`` (lower-cased) plus ``x-amz-date``, ``authorization`` and, with a session
    token, ``x-amz-security-token``, as the Rust aws-sigv4 signer in codex builds them: every
    header present is signed unless ``signed_headers`` says otherwise; the query is parsed as form
    data (``+`` is a space) and re-encoded; the path is percent-encoded twice (AWS default for
    services other than S3) unless ``double_encode_path`` is false."""
    out = {name.lower(): value for name, value in headers.items()}
    out["x-amz-date"] = amz_date(at)
    if session_token is not None:
        out["x-amz-security-token"] = session_token
    names = sorted(signed_headers if signed_headers is not None else out)
    canonical_uri = "/".join(quote(unquote(segment), safe=_UNRESERVED) for segment in path.split("/"))
    if double_encode_path:
        canonical_uri = "/".join(quote(segment, safe=_UNRESERVED) for segment in canonical_uri.split("/"))
    canonical_query = "&".join(
        f"{name}={value}"
        for name, value in sorted(
            (quote(name, safe=_UNRESERVED), quote(value, safe=_UNRESERVED))
            for name, value in parse_qsl(query, keep_blank_values=True)
        )
    )
    canonical_headers = "".join(f"{name}:{' '.join(out.get(name, '').split())}\n" for name in names)
    canonical_request = "\n".join(
        [method, canonical_uri, canonical_query, canonical_headers, ";".join(names), hashlib.sha256(body).hexdigest()]
    )
    date = credential_date or out["x-amz-date"][:8]
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", out["x-amz-date"], scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = ("AWS4" + secret).encode()
    for part in (out["x-amz-date"][:8], region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return out


def sign_register(secret: str = SECRET, access_key_id: str = EXE_ID, **overrides: Any) -> dict[str, str]:
    """A registration POST signed like codex does it (content-type;host;x-amz-date)."""
    kwargs: dict[str, Any] = {
        "method": "POST",
        "path": REGISTER_PATH,
        "headers": {"content-type": "application/json", "host": "gw.example.com"},
        "access_key_id": access_key_id,
        "secret": secret,
        "at": NOW,
        "body": REGISTER_BODY,
    }
    kwargs.update(overrides)
    return sign(**kwargs)


# --- verify() helpers ------------------------------------------------------------------------


class SecretLookup:
    """``secret_for`` that records the ids it was asked about."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        self.secrets = dict(secrets)
        self.calls: list[str] = []

    def __call__(self, access_key_id: str) -> str | None:
        self.calls.append(access_key_id)
        return self.secrets.get(access_key_id)


def run_verify(
    headers: Mapping[str, str],
    *,
    method: str = "POST",
    raw_path: str = REGISTER_PATH,
    raw_query: str = "",
    body: bytes = REGISTER_BODY,
    secret_for: Callable[[str], str | None] | None = None,
    expected_access_key_id: str = EXE_ID,
    max_skew: float = 300.0,
    now: datetime = NOW,
) -> sigv4.ParsedAuthorization:
    return sigv4.verify(
        method=method,
        raw_path=raw_path,
        raw_query=raw_query,
        headers=headers,
        body=body,
        secret_for=secret_for or SecretLookup({EXE_ID: SECRET}),
        expected_access_key_id=expected_access_key_id,
        max_skew=max_skew,
        now=now,
    )


# --- requests captured from the real codex 0.169.0 -------------------------------------------
# `AWS_ACCESS_KEY_ID=exe_test-1 AWS_SECRET_ACCESS_KEY=known-secret AWS_REGION=us-east-1
#  codex exec-server --remote http://127.0.0.1:PORT --remote-transport direct --aws-sigv4
#  --environment-id exe_test-1` against a recording registry that answered the POST with
# url = ws://HOST/codex-exec/exe_test-1?<query> and the WebSocket upgrade with 401. The second
# pair was recorded with AWS_SESSION_TOKEN='sess/tok+en=='. Headers are as received (codex
# sends no User-Agent). Hop-by-hop WebSocket headers are kept: they are not signed.

CODEX_SECRET = "known-secret"
CODEX_KEY_ID = "exe_test-1"
CAPTURED: dict[str, dict[str, Any]] = {
    "register": {
        "method": "POST",
        "path": "/cloud/environment/exe_test-1/direct/register",
        "query": "",
        "headers": {
            "content-type": "application/json",
            "x-amz-date": "20261121T192840Z",
            "authorization": "AWS4-HMAC-SHA256 Credential=exe_test-1/20261121/us-east-1/execute-api/aws4_request, "
            "SignedHeaders=content-type;host;x-amz-date, "
            "Signature=b351bda4473d37e269e560194ad403bf3e3187be8f9c71259784d45e4080dcde",
            "accept": "*/*",
            "host": "127.0.0.1:43327",
            "content-length": "33",
        },
        "body": b'{"transport":"direct_jsonrpc_v1"}',
    },
    "websocket": {
        "method": "GET",
        "path": "/codex-exec/exe_test-1",
        "query": "ticket=abc%2Fdef&b=1&sp=a+b&e=&z=%7Etilde",
        "headers": {
            "host": "127.0.0.1:43327",
            "connection": "Upgrade",
            "upgrade": "websocket",
            "sec-websocket-version": "13",
            "sec-websocket-key": "svNWGjelc3aip60HRyGmRQ==",
            "authorization": "AWS4-HMAC-SHA256 Credential=exe_test-1/20261121/us-east-1/execute-api/aws4_request, "
            "SignedHeaders=host;x-amz-date, "
            "Signature=ce74909cdb6722c434fc4381065e76476a7f15d4ce76a97f5db422bf75a1c730",
            "x-amz-date": "20261121T192840Z",
        },
        "body": b"",
    },
    "register-session-token": {
        "method": "POST",
        "path": "/cloud/environment/exe_test-1/direct/register",
        "query": "",
        "headers": {
            "content-type": "application/json",
            "x-amz-date": "20261121T192852Z",
            "authorization": "AWS4-HMAC-SHA256 Credential=exe_test-1/20261121/us-east-1/execute-api/aws4_request, "
            "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, "
            "Signature=605a7a52f0be1ab35c9a48d03086459a11ab6f2665635fded09d481390543882",
            "x-amz-security-token": "sess/tok+en==",
            "accept": "*/*",
            "host": "127.0.0.1:40515",
            "content-length": "33",
        },
        "body": b'{"transport":"direct_jsonrpc_v1"}',
    },
    "websocket-session-token": {
        "method": "GET",
        "path": "/codex-exec/exe_test-1",
        "query": "ticket=exe_test-1.1795000000.AbC_-x%2Fy&b=1&sp=a+b&e=&z=%7Etilde&q=x%20y",
        "headers": {
            "host": "127.0.0.1:40515",
            "connection": "Upgrade",
            "upgrade": "websocket",
            "sec-websocket-version": "13",
            "sec-websocket-key": "edCPkihZ/8h6mLUyV1+ymw==",
            "x-amz-security-token": "sess/tok+en==",
            "authorization": "AWS4-HMAC-SHA256 Credential=exe_test-1/20261121/us-east-1/execute-api/aws4_request, "
            "SignedHeaders=host;x-amz-date;x-amz-security-token, "
            "Signature=fdf0de8c6c2ee87688c32f35df032aa5bd28f955a3bb26181f0a5c2e6d86c6fe",
            "x-amz-date": "20261121T192852Z",
        },
        "body": b"",
    },
}


def captured_time(request: dict[str, Any]) -> datetime:
    return datetime.strptime(request["headers"]["x-amz-date"], AMZ_DATE_FORMAT).replace(tzinfo=UTC)


def verify_captured(request: dict[str, Any], secret: str, **overrides: Any) -> sigv4.ParsedAuthorization:
    kwargs: dict[str, Any] = {
        "method": request["method"],
        "raw_path": request["path"],
        "raw_query": request["query"],
        "headers": request["headers"],
        "body": request["body"],
        "secret_for": SecretLookup({CODEX_KEY_ID: secret}),
        "expected_access_key_id": CODEX_KEY_ID,
        "now": captured_time(request),
    }
    kwargs.update(overrides)
    return run_verify(**kwargs)


@pytest.mark.parametrize("name", list(CAPTURED))
def test_real_codex_signature_verifies(name):
    request = CAPTURED[name]
    parsed = verify_captured(request, CODEX_SECRET)
    assert parsed.access_key_id == CODEX_KEY_ID
    assert (parsed.date, parsed.region, parsed.service) == ("20261121", "us-east-1", "execute-api")
    assert parsed.signature == request["headers"]["authorization"].rsplit("Signature=", 1)[1]


@pytest.mark.parametrize("name", list(CAPTURED))
def test_real_codex_signature_fails_with_another_secret(name):
    with pytest.raises(SigV4Error, match="signature does not match"):
        verify_captured(CAPTURED[name], CODEX_SECRET + "x")


@pytest.mark.parametrize("name", list(CAPTURED))
def test_real_codex_signature_expires(name):
    request = CAPTURED[name]
    with pytest.raises(SigV4Error, match="clock skew"):
        verify_captured(request, CODEX_SECRET, now=captured_time(request) + timedelta(minutes=6))


@pytest.mark.parametrize("name", list(CAPTURED))
def test_test_signer_reproduces_real_codex_signature(name):
    """The test signer builds byte-for-byte the Authorization header codex built, so the other
    tests exercise the verifier with requests shaped exactly like the real executor's."""
    request = CAPTURED[name]
    headers = request["headers"]
    signed = headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    ours = sign(
        method=request["method"],
        path=request["path"],
        query=request["query"],
        headers={h: headers[h] for h in signed if h not in ("x-amz-date", "x-amz-security-token")},
        session_token=headers.get("x-amz-security-token"),
        body=request["body"],
        access_key_id=CODEX_KEY_ID,
        secret=CODEX_SECRET,
        at=captured_time(request),
    )
    assert ours["authorization"] == headers["authorization"]


def test_plus_in_query_is_a_space_like_codex_signs_it():
    """codex signs a raw ``+`` in the URL query as a space; a literal plus must arrive as ``%2B``."""
    request = CAPTURED["websocket"]
    assert "sp=a+b" in request["query"]
    assert verify_captured(request, CODEX_SECRET).access_key_id == CODEX_KEY_ID
    with pytest.raises(SigV4Error, match="signature does not match"):
        verify_captured(request, CODEX_SECRET, raw_query=request["query"].replace("sp=a+b", "sp=a%2Bb"))
    assert (
        verify_captured(request, CODEX_SECRET, raw_query=request["query"].replace("sp=a+b", "sp=a%20b")).access_key_id
        == CODEX_KEY_ID
    )


# --- valid requests --------------------------------------------------------------------------


def test_valid_register_post_verifies():
    lookup = SecretLookup({EXE_ID: SECRET})
    parsed = run_verify(sign_register(), secret_for=lookup)
    assert parsed == sigv4.ParsedAuthorization(
        access_key_id=EXE_ID,
        date="20261121",
        region="us-east-1",
        service="execute-api",
        signed_headers=("content-type", "host", "x-amz-date"),
        signature=parsed.signature,
    )
    assert len(parsed.signature) == 64
    assert lookup.calls == [EXE_ID]


@pytest.mark.parametrize(
    "query",
    [
        "ticket=abc%2Fdef&b=1",
        "z=last&a=first&m=%E2%9C%93&e=&flag",
        "path=%2Fhome%2Fuser%20dir&tilde=%7E&star=%2A&space=a+b",
        "dup=2&dup=1",
    ],
)
def test_valid_websocket_get_with_query_verifies(query):
    path = f"/codex-exec/{EXE_ID}"
    headers = sign(
        method="GET",
        path=path,
        query=query,
        headers={"host": "127.0.0.1:6060"},
        access_key_id=EXE_ID,
        secret=SECRET,
        at=NOW,
    )
    parsed = run_verify(headers, method="GET", raw_path=path, raw_query=query, body=b"")
    assert parsed.signed_headers == ("host", "x-amz-date")


def test_query_is_part_of_the_signature():
    path = f"/codex-exec/{EXE_ID}"
    headers = sign(
        method="GET",
        path=path,
        query="ticket=abc%2Fdef",
        headers={"host": "h"},
        access_key_id=EXE_ID,
        secret=SECRET,
        at=NOW,
    )
    with pytest.raises(SigV4Error, match="signature does not match"):
        run_verify(headers, method="GET", raw_path=path, raw_query="ticket=abc%2Fdeg", body=b"")


def test_session_token_is_signed_and_verifies():
    headers = sign_register(session_token="FwoGZXIvYXdzE/token+with=chars")
    parsed = run_verify(headers)
    assert parsed.signed_headers == ("content-type", "host", "x-amz-date", "x-amz-security-token")
    headers["x-amz-security-token"] = "another-token"
    with pytest.raises(SigV4Error, match="signature does not match"):
        run_verify(headers)


@pytest.mark.parametrize("double_encode", [True, False])
def test_path_encoded_once_or_twice_verifies(double_encode):
    """A path segment that needs percent-encoding: the verifier accepts either canonical form."""
    raw_path = "/cloud/environment/exe_%C3%A9t%C3%A9/direct/register"
    headers = sign_register(path=raw_path, access_key_id="exe_été", double_encode_path=double_encode)
    parsed = run_verify(
        headers, raw_path=raw_path, expected_access_key_id="exe_été", secret_for=SecretLookup({"exe_été": SECRET})
    )
    assert parsed.access_key_id == "exe_été"
    with pytest.raises(SigV4Error, match="signature does not match"):
        run_verify(
            headers,
            raw_path=raw_path.replace("%C3%A9t", "%C3%A8t"),
            expected_access_key_id="exe_été",
            secret_for=SecretLookup({"exe_été": SECRET}),
        )


def test_header_values_are_trimmed_and_spaces_folded():
    headers = sign_register(headers={"content-type": "application/json", "host": "gw.example.com", "x-note": "a  b"})
    headers["x-note"] = "  a   b "
    assert "x-note" in run_verify(headers).signed_headers


@pytest.mark.parametrize("offset", [timedelta(seconds=-299), timedelta(seconds=299)])
def test_clock_skew_within_limit_verifies(offset):
    assert run_verify(sign_register(at=NOW + offset)).access_key_id == EXE_ID


# --- refusals --------------------------------------------------------------------------------


def test_wrong_secret_fails():
    with pytest.raises(SigV4Error, match="signature does not match"):
        run_verify(sign_register(secret=SECRET + "-wrong"))


def test_wrong_access_key_id_fails_before_secret_lookup():
    lookup = SecretLookup({EXE_ID: SECRET, "exe_other": SECRET})
    with pytest.raises(SigV4Error, match="does not name this executor"):
        run_verify(sign_register(access_key_id="exe_other"), secret_for=lookup)
    assert lookup.calls == []


def test_unknown_access_key_id_fails():
    lookup = SecretLookup({})
    with pytest.raises(SigV4Error, match="unknown access key id"):
        run_verify(sign_register(), secret_for=lookup)
    assert lookup.calls == [EXE_ID]


@pytest.mark.parametrize(
    "offset",
    [timedelta(seconds=-301), timedelta(seconds=301), timedelta(hours=-25), timedelta(days=2)],
    ids=["expired", "future", "yesterday", "far-future"],
)
def test_date_outside_skew_fails(offset):
    lookup = SecretLookup({EXE_ID: SECRET})
    with pytest.raises(SigV4Error, match="clock skew"):
        run_verify(sign_register(at=NOW + offset), secret_for=lookup)
    assert lookup.calls == []


def test_max_skew_is_honoured():
    headers = sign_register(at=NOW - timedelta(seconds=30))
    assert run_verify(headers, max_skew=31).access_key_id == EXE_ID
    with pytest.raises(SigV4Error, match="clock skew"):
        run_verify(headers, max_skew=29)


def test_credential_date_differing_from_x_amz_date_fails():
    headers = sign_register(credential_date="20261120")
    with pytest.raises(SigV4Error, match="credential date does not match"):
        run_verify(headers)


@pytest.mark.parametrize("value", [None, "", "2026-11-21T19:00:39Z", "20261121T190039", "20261321T190039Z"])
def test_missing_or_malformed_x_amz_date_fails(value):
    headers = sign_register()
    if value is None:
        del headers["x-amz-date"]
    else:
        headers["x-amz-date"] = value
    with pytest.raises(SigV4Error, match="missing or malformed x-amz-date"):
        run_verify(headers)


@pytest.mark.parametrize(
    "signed",
    [["content-type", "x-amz-date"], ["content-type", "host"], ["x-amz-date"]],
    ids=["host-unsigned", "date-unsigned", "only-date"],
)
def test_host_and_date_must_be_signed(signed):
    lookup = SecretLookup({EXE_ID: SECRET})
    with pytest.raises(SigV4Error, match="host and x-amz-date must be signed"):
        run_verify(sign_register(signed_headers=signed), secret_for=lookup)
    assert lookup.calls == []


@pytest.mark.parametrize(
    ("field", "tampered"),
    [
        ("body", b'{"transport":"direct_jsonrpc_v2"}'),
        ("body", b""),
        ("method", "PUT"),
        ("raw_path", "/cloud/environment/exe_0b6f8a52-6f8e-4a2b-9b7e-3c1d2e4f5a6b/register"),
        ("raw_query", "extra=1"),
    ],
)
def test_tampered_request_fails(field, tampered):
    with pytest.raises(SigV4Error, match="signature does not match"):
        run_verify(sign_register(), **{field: tampered})


@pytest.mark.parametrize(("header", "value"), [("host", "evil.example.com"), ("content-type", "text/plain")])
def test_tampered_signed_header_fails(header, value):
    headers = sign_register()
    headers[header] = value
    with pytest.raises(SigV4Error, match="signature does not match"):
        run_verify(headers)


def test_unsigned_header_may_change():
    headers = sign_register()
    headers["user-agent"] = "anything"
    headers["x-forwarded-for"] = "203.0.113.9"
    assert run_verify(headers).signed_headers == ("content-type", "host", "x-amz-date")


@pytest.mark.parametrize("dropped", ["content-type", "x-amz-security-token"])
def test_signed_header_absent_from_request_fails(dropped):
    lookup = SecretLookup({EXE_ID: SECRET})
    headers = sign_register(session_token="tok")
    del headers[dropped]
    with pytest.raises(SigV4Error, match=f"signed header\\(s\\) absent: {dropped}"):
        run_verify(headers, secret_for=lookup)
    assert lookup.calls == []


def test_missing_authorization_fails():
    headers = sign_register()
    del headers["authorization"]
    with pytest.raises(SigV4Error, match="missing authorization"):
        run_verify(headers)


_GOOD_CREDENTIAL = f"Credential={EXE_ID}/20261121/us-east-1/execute-api/aws4_request"
_GOOD_SIGNED = "SignedHeaders=content-type;host;x-amz-date"
_GOOD_SIGNATURE = "Signature=" + "0" * 64


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (f"AWS4-HMAC-SHA1 {_GOOD_CREDENTIAL}, {_GOOD_SIGNED}, {_GOOD_SIGNATURE}", "not an AWS4-HMAC-SHA256"),
        (f"aws4-hmac-sha256 {_GOOD_CREDENTIAL}, {_GOOD_SIGNED}, {_GOOD_SIGNATURE}", "not an AWS4-HMAC-SHA256"),
        (f"Bearer {SECRET}", "not an AWS4-HMAC-SHA256"),
        ("AWS4-HMAC-SHA256", "malformed authorization"),
        (f"AWS4-HMAC-SHA256 {_GOOD_CREDENTIAL}, {_GOOD_SIGNED}", "lacks a field"),
        (f"AWS4-HMAC-SHA256 {_GOOD_CREDENTIAL}, {_GOOD_SIGNATURE}", "lacks a field"),
        (f"AWS4-HMAC-SHA256 {_GOOD_SIGNED}, {_GOOD_SIGNATURE}", "lacks a field"),
        (
            f"AWS4-HMAC-SHA256 {_GOOD_CREDENTIAL}, {_GOOD_CREDENTIAL}, {_GOOD_SIGNED}, {_GOOD_SIGNATURE}",
            "malformed authorization",
        ),
        (
            f"AWS4-HMAC-SHA256 {_GOOD_CREDENTIAL}, {_GOOD_SIGNED}, {_GOOD_SIGNATURE}, {_GOOD_SIGNATURE}",
            "malformed authorization",
        ),
        (f"AWS4-HMAC-SHA256 {_GOOD_CREDENTIAL}, {_GOOD_SIGNED}, {_GOOD_SIGNATURE}, Foo=bar", "malformed authorization"),
        (f"AWS4-HMAC-SHA256 {_GOOD_CREDENTIAL} {_GOOD_SIGNED} {_GOOD_SIGNATURE}", "malformed authorization"),
        (f"AWS4-HMAC-SHA256 {_GOOD_CREDENTIAL},, {_GOOD_SIGNED}, {_GOOD_SIGNATURE}", "malformed authorization"),
        (f"AWS4-HMAC-SHA256 Credential=, {_GOOD_SIGNED}, {_GOOD_SIGNATURE}", "malformed authorization"),
        (
            f"AWS4-HMAC-SHA256 Credential={EXE_ID}/20261121/us-east-1/aws4_request, {_GOOD_SIGNED}, {_GOOD_SIGNATURE}",
            "malformed credential scope",
        ),
        (
            f"AWS4-HMAC-SHA256 Credential={EXE_ID}/20261121/us-east-1/execute-api/aws4_request/x, "
            f"{_GOOD_SIGNED}, {_GOOD_SIGNATURE}",
            "malformed credential scope",
        ),
        (
            f"AWS4-HMAC-SHA256 Credential={EXE_ID}/20261121/us-east-1/execute-api/aws5_request, "
            f"{_GOOD_SIGNED}, {_GOOD_SIGNATURE}",
            "malformed credential scope",
        ),
        (
            f"AWS4-HMAC-SHA256 Credential={EXE_ID}/20261121//execute-api/aws4_request, "
            f"{_GOOD_SIGNED}, {_GOOD_SIGNATURE}",
            "malformed credential scope",
        ),
        (
            f"AWS4-HMAC-SHA256 {_GOOD_CREDENTIAL}, SignedHeaders=host;content-type;x-amz-date, {_GOOD_SIGNATURE}",
            "signed headers are not sorted",
        ),
        (
            f"AWS4-HMAC-SHA256 {_GOOD_CREDENTIAL}, SignedHeaders=content-type;Host;x-amz-date, {_GOOD_SIGNATURE}",
            "signed headers are not sorted",
        ),
        (
            f"AWS4-HMAC-SHA256 {_GOOD_CREDENTIAL}, SignedHeaders=;content-type;host;x-amz-date, {_GOOD_SIGNATURE}",
            "signed headers are not sorted",
        ),
    ],
)
def test_malformed_authorization_fails_before_secret_lookup(authorization, reason):
    lookup = SecretLookup({EXE_ID: SECRET})
    headers = sign_register()
    headers["authorization"] = authorization
    with pytest.raises(SigV4Error, match=reason):
        run_verify(headers, secret_for=lookup)
    assert lookup.calls == []


def test_parse_authorization_accepts_codex_header_and_extra_whitespace():
    value = CAPTURED["register"]["headers"]["authorization"]
    parsed = sigv4.parse_authorization(value)
    spaced = sigv4.parse_authorization("  " + value.replace(", ", " ,  ") + " ")
    assert parsed == spaced
    assert parsed.signed_headers == ("content-type", "host", "x-amz-date")


def test_signature_in_other_case_fails():
    headers = sign_register()
    prefix, signature = headers["authorization"].rsplit("Signature=", 1)
    headers["authorization"] = f"{prefix}Signature={signature.upper()}"
    with pytest.raises(SigV4Error, match="signature does not match"):
        run_verify(headers)
