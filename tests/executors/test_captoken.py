"""Capability token format, verification order and errors (reference exec-gateway §3)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from executors import b64, captoken

SECRET = "s3cret"


def hand_built(payload: dict[str, object], secret: str = SECRET, header: bytes = captoken.HEADER) -> str:
    signing_input = f"{b64.encode(header)}.{b64.encode(json.dumps(payload).encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64.encode(signature)}"


def test_round_trip_workspace_token():
    token = captoken.mint(SECRET, turn_id="trn_1", workspace_id="w1", ttl=900, user_id="u1")
    payload = captoken.verify(token, SECRET)
    assert (payload.turn_id, payload.workspace_id, payload.user_id) == ("trn_1", "w1", "u1")
    assert payload.exp - payload.iat == 900
    assert payload.exe_ids is None
    assert payload.allows_exe_id("exe_any")


def test_header_is_exactly_the_reference_bytes():
    token = captoken.mint(SECRET, turn_id="t", workspace_id="w", ttl=60)
    assert b64.decode(token.split(".")[0]) == b'{"alg":"HS256","typ":"CXG"}'
    assert "=" not in token


def test_exe_ids_restrict_the_executor():
    token = captoken.mint(SECRET, turn_id="t", workspace_id="w", ttl=60, exe_ids=["exe_a"])
    payload = captoken.verify(token, SECRET)
    assert payload.allows_exe_id("exe_a")
    assert not payload.allows_exe_id("exe_b")


def test_payload_without_user_id_still_verifies():
    now = int(time.time())
    payload = captoken.verify(hand_built({"turn_id": "t", "workspace_id": "w", "iat": now, "exp": now + 60}), SECRET)
    assert payload.user_id == ""
    assert payload.turn_id == "t"


def test_other_key_is_bad_signature():
    token = captoken.mint("other", turn_id="t", workspace_id="w", ttl=60)
    with pytest.raises(captoken.BadSignature):
        captoken.verify(token, SECRET)


def test_expiry_is_strictly_after_exp():
    now = 1_800_000_000
    token = captoken.mint(SECRET, turn_id="t", workspace_id="w", ttl=10, now=now)
    assert captoken.verify(token, SECRET, now=now + 10).exp == now + 10  # exp == now passes
    with pytest.raises(captoken.Expired) as info:
        captoken.verify(token, SECRET, now=now + 11)
    assert str(info.value) == "token expired"


def test_missing_exp_is_expired():
    with pytest.raises(captoken.Expired):
        captoken.verify(hand_built({"turn_id": "t", "workspace_id": "w"}), SECRET)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!.!.!", "a..c", "..", "e30.e30.e30="])
def test_malformed_shapes(token):
    with pytest.raises(captoken.Malformed):
        captoken.verify(token, SECRET)


def test_wrong_header_is_malformed_even_with_valid_mac():
    token = hand_built({"turn_id": "t", "workspace_id": "w", "exp": 2**40}, header=b'{"alg":"none","typ":"CXG"}')
    with pytest.raises(captoken.Malformed):
        captoken.verify(token, SECRET)


def test_header_whitespace_and_key_order_do_not_matter():
    token = hand_built({"turn_id": "t", "workspace_id": "w", "exp": 2**40}, header=b'{ "typ": "CXG", "alg": "HS256" }')
    assert captoken.verify(token, SECRET).turn_id == "t"


def test_signature_is_checked_before_payload_is_parsed():
    # A garbage payload under a wrong MAC reports BadSignature, not Malformed.
    header = b64.encode(captoken.HEADER)
    token = f"{header}.{b64.encode(b'not json')}.{b64.encode(b'x' * 32)}"
    with pytest.raises(captoken.BadSignature):
        captoken.verify(token, SECRET)


def test_garbage_payload_with_valid_mac_is_malformed():
    signing_input = f"{b64.encode(captoken.HEADER)}.{b64.encode(b'not json')}"
    mac = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(captoken.Malformed):
        captoken.verify(f"{signing_input}.{b64.encode(mac)}", SECRET)


@pytest.mark.parametrize(
    "payload",
    [
        {"turn_id": 1, "workspace_id": "w", "exp": 2**40},
        {"turn_id": "t", "workspace_id": "w", "exp": "soon"},
        {"turn_id": "t", "workspace_id": "w", "exp": 2**40, "exe_ids": "exe_a"},
        {"turn_id": "t", "workspace_id": "w", "exp": 2**40, "exe_ids": [1]},
    ],
)
def test_wrongly_typed_payload_fields_are_malformed(payload):
    with pytest.raises(captoken.Malformed):
        captoken.verify(hand_built(payload), SECRET)


def test_mint_refuses_empty_secret_or_ids():
    with pytest.raises(ValueError, match="secret"):
        captoken.mint("", turn_id="t", workspace_id="w", ttl=1)
    with pytest.raises(ValueError, match="required"):
        captoken.mint(SECRET, turn_id="", workspace_id="w", ttl=1)
    with pytest.raises(ValueError, match="required"):
        captoken.mint(SECRET, turn_id="t", workspace_id="", ttl=1)


def test_verify_refuses_empty_secret():
    token = captoken.mint(SECRET, turn_id="t", workspace_id="w", ttl=60)
    with pytest.raises(ValueError, match="secret"):
        captoken.verify(token, "")
