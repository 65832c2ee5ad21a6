"""Fuzz corpus: AWS SigV4 on the executor's registration POST and WebSocket upgrade
(``executors.sigv4.verify``, ``POST /cloud/environment/{id}/direct/register``,
``bridge.ws_auth.authenticate_executor``). Truncated, re-signed, stale, other-executor and
garbage credentials are refused (``SigV4Error``; 401 ``{"error": "unauthorized"}``; a 401
``Denial``), never with another exception or a 5xx. Fixed seed, bounded examples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bridge import ws_auth
from executors import services, sigv4, wsticket
from tests.executors.test_sigv4 import EXE_ID, NOW, REGISTER_BODY, SECRET, run_verify, sign_register
from tests.executors.test_sigv4 import sign as sign_request
from tests.fuzzing import count, fuzz, run

KIND = "SigV4 header"
latin1 = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=60)
MUTATIONS = ("truncate", "resign", "stale", "other-executor", "credential-date", "garbage-field", "drop-header")


def mutate(headers: dict[str, str], case: str, n: int, text: str) -> tuple[dict[str, str], dict[str, Any]]:
    """``headers`` of a validly signed request, spoiled by ``case``; extra ``run_verify`` kwargs."""
    out = dict(headers)
    authorization = out["authorization"]
    if case == "truncate":
        out["authorization"] = authorization[: n % len(authorization)]
    elif case == "resign":
        return sign_register(secret=SECRET + (text or "x")), {}
    elif case == "stale":
        return sign_register(at=NOW - timedelta(seconds=301 + n % 10**7)), {}
    elif case == "other-executor":
        return sign_register(access_key_id=EXE_ID + (text or "2")), {}
    elif case == "credential-date":
        return sign_register(credential_date=(NOW - timedelta(days=1 + n % 1000)).strftime("%Y%m%d")), {}
    elif case == "garbage-field":
        start = n % len(authorization)
        out["authorization"] = authorization[:start] + text + authorization[start + 1 + n % 5 :]
    else:  # drop a signed header
        name = ("x-amz-date", "host", "content-type")[n % 3]
        out.pop(name, None)
    return out, {}


def test_signature_verification_refuses_spoiled_requests():
    @fuzz(500)
    @given(case=st.sampled_from(MUTATIONS), n=st.integers(min_value=0), text=latin1)
    @example(case="garbage-field", n=0, text="AWS4-HMAC-SHA256 ")
    @example(case="garbage-field", n=168, text="\x80")  # found: a non-ASCII Signature raised TypeError
    def spoiled(case, n, text):
        count(KIND)
        headers, extra = mutate(sign_register(), case, n, text)
        if headers.get("authorization") == sign_register()["authorization"] and case != "drop-header":
            return  # the mutation happened to change nothing
        with pytest.raises(sigv4.SigV4Error):
            run_verify(headers, **extra)

    assert run_verify(sign_register()).access_key_id == EXE_ID  # the unspoiled request passes
    run(KIND, spoiled, 500)


def test_arbitrary_authorization_headers_are_sigv4_errors():
    fields = st.lists(
        st.sampled_from(["Credential=", "SignedHeaders=", "Signature=", ",", " ", "/", ";"]) | latin1, max_size=12
    ).map("".join)

    @fuzz(300)
    @given(
        authorization=st.one_of(latin1, fields.map(lambda rest: "AWS4-HMAC-SHA256 " + rest)),
        amz_date=st.one_of(st.just(NOW.strftime("%Y%m%dT%H%M%SZ")), latin1),
    )
    @example(
        # A well-formed header whose signature is not ASCII once made hmac.compare_digest raise TypeError.
        authorization=f"AWS4-HMAC-SHA256 Credential={EXE_ID}/20261121/us-east-1/execute-api/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=\u00e9",
        amz_date=NOW.strftime("%Y%m%dT%H%M%SZ"),
    )
    def arbitrary(authorization, amz_date):
        count(KIND)
        headers = {"host": "gw.example.com", "content-type": "application/json", "x-amz-date": amz_date}
        headers["authorization"] = authorization
        with pytest.raises(sigv4.SigV4Error):
            run_verify(headers)

    run(KIND, arbitrary, 300)


# --- the registration route --------------------------------------------------------------------


@pytest.mark.django_db
def test_registration_refuses_spoiled_signatures_with_401(api):
    new = services.register_executor("user-1", "laptop")
    exe_id, secret = new.executor.exe_id, new.registration_token
    path = f"/cloud/environment/{exe_id}/direct/register"

    def post(headers: dict[str, str], body: bytes = REGISTER_BODY) -> Any:
        sent = {name: value for name, value in headers.items() if name != "content-type"}
        return api.post(path, data=body, content_type="application/json", headers=sent)

    def signed(**overrides: Any) -> dict[str, str]:
        kwargs: dict[str, Any] = {
            "method": "POST",
            "path": path,
            "headers": {"content-type": "application/json", "host": "testserver"},
            "access_key_id": exe_id,
            "secret": secret,
            "at": datetime.now(UTC),
            "body": REGISTER_BODY,
        }
        kwargs.update(overrides)
        return sign_request(**kwargs)

    assert post(signed()).status_code == 200

    @fuzz(300)
    @given(
        case=st.sampled_from(("truncate", "resign", "stale", "other-executor", "garbage", "body")),
        n=st.integers(min_value=0),
        text=latin1,
    )
    @example(
        case="garbage",
        n=0,
        text="AWS4-HMAC-SHA256 Credential={exe}/{date}/us-east-1/execute-api/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=\u00e9",
    )
    def registration(case, n, text):
        count(KIND)
        headers, body = signed(), REGISTER_BODY
        if case == "truncate":
            headers["authorization"] = headers["authorization"][: n % len(headers["authorization"])]
        elif case == "resign":
            headers = signed(secret=secret + (text or "x"))
        elif case == "stale":
            headers = signed(at=datetime.now(UTC) - timedelta(seconds=301 + n % 10**7))
        elif case == "other-executor":
            headers = signed(access_key_id=exe_id + (text or "2"))
        elif case == "garbage":
            headers["authorization"] = text.replace("{exe}", exe_id).replace("{date}", headers["x-amz-date"][:8])
        else:  # the body was changed after signing
            body = REGISTER_BODY + text.encode("latin-1") + b" "
        response = post(headers, body)
        assert (response.status_code, response.json()) == (401, {"error": "unauthorized"})

    run(KIND, registration, 300)


# --- the WebSocket upgrade ---------------------------------------------------------------------


@pytest.mark.django_db
def test_executor_upgrade_refuses_spoiled_signatures_and_tickets_with_401(settings):
    new = services.register_executor("user-1", "laptop")
    exe_id, secret = new.executor.exe_id, new.registration_token
    path = f"/codex-exec/{exe_id}"

    def signed(**overrides: Any) -> dict[str, str]:
        kwargs: dict[str, Any] = {
            "method": "GET",
            "path": path,
            "headers": {"host": "testserver"},
            "access_key_id": exe_id,
            "secret": secret,
            "at": datetime.now(UTC),
        }
        kwargs.update(overrides)
        return sign_request(**kwargs)

    assert ws_auth.authenticate_executor(exe_id, signed(), path, "") is None
    good_ticket = wsticket.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, exe_id, 60)
    assert ws_auth.authenticate_executor(exe_id, {"host": "testserver"}, path, f"ticket={good_ticket}") is None

    @fuzz(300)
    @given(
        case=st.sampled_from(("truncate", "resign", "stale", "other-executor", "ticket", "expired-ticket", "query")),
        n=st.integers(min_value=0),
        text=latin1,
    )
    def upgrade(case, n, text):
        count(KIND)
        headers, query = signed(), ""
        if case == "truncate":
            headers["authorization"] = headers["authorization"][: max(1, n % len(headers["authorization"]))]
        elif case == "resign":
            headers = signed(secret=secret + (text or "x"))
        elif case == "stale":
            headers = signed(at=datetime.now(UTC) - timedelta(seconds=301 + n % 10**7))
        elif case == "other-executor":
            headers = signed(access_key_id=exe_id + (text or "2"))
        elif case == "ticket":
            headers = {"host": "testserver"}
            cut = n % len(good_ticket)
            query = "ticket=" + good_ticket[:cut] + text + good_ticket[cut + 1 :]
        elif case == "expired-ticket":
            headers = {"host": "testserver"}
            query = "ticket=" + wsticket.mint(settings.CXG_CAPTOKEN_HMAC_SECRET, exe_id, -(n % 10**6))
        else:  # the query was changed after signing
            query = "x=" + text.encode("latin-1").hex() + "&y=1"
        if case == "ticket" and query == "ticket=" + good_ticket:
            return
        assert ws_auth.authenticate_executor(exe_id, headers, path, query) == ws_auth.Denial(401, "unauthorized")

    run(KIND, upgrade, 300)

    @fuzz(200)
    @given(
        exe=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40),
        credential=st.sampled_from(["sigv4", "ticket", "token", "long-token", "none"]),
    )
    @example(exe="\x00", credential="token")  # found: a NUL in the path's executor id raised DataError
    @example(exe="\x00", credential="sigv4")
    @example(exe=exe_id, credential="long-token")  # found: a token over 72 bytes made bcrypt raise ValueError
    def other_executor_ids(exe, credential):
        count(KIND)
        headers, query = {"host": "testserver"}, ""
        if credential == "sigv4":
            headers = sign_request(
                method="GET",
                path=f"/codex-exec/{exe}",
                headers={"host": "testserver"},
                access_key_id=exe,
                secret=secret,
                at=datetime.now(UTC),
            )
        elif credential == "ticket":
            query = "ticket=" + good_ticket  # minted for another executor
        elif credential == "token":
            query = "token=" + secret
        elif credential == "long-token":
            query = "token=" + secret * 2
        denial = ws_auth.authenticate_executor(exe, headers, f"/codex-exec/{exe}", query)
        assert denial == ws_auth.Denial(401, "unauthorized")

    run(KIND, other_executor_ids, 200)
