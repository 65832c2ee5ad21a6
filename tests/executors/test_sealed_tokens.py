"""Registration tokens at rest, and the executor WebSocket tickets of the bearer routes."""

from __future__ import annotations

import base64
import string

from executors import secretbox, wsticket


def test_encrypt_round_trip_and_rotation(settings):
    settings.TOKEN_ENCRYPTION_KEYS = ["old-key"]
    sealed = secretbox.encrypt("token-value")
    assert "token-value" not in sealed
    settings.TOKEN_ENCRYPTION_KEYS = ["new-key", "old-key"]
    assert secretbox.decrypt(sealed) == "token-value"
    settings.TOKEN_ENCRYPTION_KEYS = ["unrelated"]
    assert secretbox.decrypt(sealed) is None


def test_ticket_round_trip_and_refusals():
    now = 1_800_000_000
    ticket = wsticket.mint("secret", "exe_a", 300, now=now)
    assert ticket.startswith("exe_a.")
    assert wsticket.verify("secret", ticket, "exe_a", now=now + 299)
    assert not wsticket.verify("secret", ticket, "exe_a", now=now + 300)
    assert not wsticket.verify("secret", ticket, "exe_b", now=now)
    assert not wsticket.verify("other", ticket, "exe_a", now=now)
    assert not wsticket.verify("", ticket, "exe_a", now=now)
    exe, expiry, mac = ticket.split(".")
    assert not wsticket.verify("secret", f"{exe}.{int(expiry) + 1000}.{mac}", "exe_a", now=now)
    assert not wsticket.verify("secret", "garbage", "exe_a", now=now)
    assert not wsticket.verify("secret", f"{exe}.{expiry}.!!", "exe_a", now=now)


def test_ticket_with_a_respelled_signature_is_refused():
    # The MAC's last base64url character has two unused bits; a lenient decoder took three
    # other spellings of the same ticket (found by the SigV4 fuzz run in CI).
    now = 1_800_000_000
    ticket = wsticket.mint("secret", "exe_a", 300, now=now)
    head, mac = ticket.rsplit(".", 1)
    same_bytes = [
        c
        for c in string.ascii_letters + string.digits + "-_"
        if c != mac[-1] and base64.urlsafe_b64decode(mac[:-1] + c + "=") == base64.urlsafe_b64decode(mac + "=")
    ]
    assert len(same_bytes) == 3
    for c in same_bytes:
        assert not wsticket.verify("secret", f"{head}.{mac[:-1]}{c}", "exe_a", now=now)
