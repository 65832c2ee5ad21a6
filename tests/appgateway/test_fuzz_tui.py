"""Fuzz corpus: the TUI WebSocket. Client frames through ``appgateway.rpc_filter.inspect_client_frame``
(never raises; local-IO methods are refused however the frame encodes them: escaped keys and
names, duplicate ``method`` keys, binary frames, batches, any id) and upgrade headers through
``appgateway.auth.authenticate_tui`` in built-in mode (only 401/403 ``Denial``s with the
documented reason, never 503, never an exception). Fixed seed, bounded examples."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.utils import timezone
from hypothesis import example, given
from hypothesis import strategies as st

from appgateway import auth, rpc_filter
from bridge.ws_auth import Denial
from tests.fuzzing import count, fuzz, run
from workspaces import tokens
from workspaces.models import AccessToken, Membership, Role, Workspace

FRAME_KIND = "TUI frame"
UPGRADE_KIND = "TUI upgrade header"

blocked_methods = st.sampled_from(sorted(rpc_filter.BLOCKED_METHODS)) | st.builds(
    lambda prefix, rest: prefix + rest, st.sampled_from(rpc_filter.BLOCKED_PREFIXES), st.text(max_size=15)
)
benign_methods = st.sampled_from(
    ["thread/start", "turn/start", "turn/interrupt", "model/list", "account/read", "initialize", "thread/list", "fs"]
) | st.text(max_size=20)
ids = st.none() | st.integers() | st.integers(min_value=2**64) | st.text(max_size=10) | st.floats(allow_nan=False)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
)


def escaped(text: str, mask: int) -> str:
    """``text`` as a JSON string literal with some characters written as ``\\uXXXX`` escapes."""
    out: list[str] = []
    for index, char in enumerate(text):
        if mask >> (index % 60) & 1 or not char.isprintable() or char in '"\\':
            out.extend(f"\\u{unit:04x}" for unit in _utf16_units(char))
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _utf16_units(char: str) -> list[int]:
    data = char.encode("utf-16-be", "surrogatepass")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


@st.composite
def requests(draw: Any, method: st.SearchStrategy[str]) -> tuple[str, str, Any, bool]:
    """A request object's JSON text, with its (blocked or benign) method, id (absent: no id)."""
    name = draw(method)
    members = [(escaped("method", draw(st.integers(min_value=0))), escaped(name, draw(st.integers(min_value=0))))]
    has_id = draw(st.booleans())
    request_id = draw(ids) if has_id else None
    if has_id:
        members.append(('"id"', json.dumps(request_id)))
    if draw(st.booleans()):
        members.append(('"params"', json.dumps(draw(json_values))))
    if draw(st.booleans()):  # a second method key, harmless, before or after the real one
        other = (escaped("method", draw(st.integers(min_value=0))), json.dumps(draw(benign_methods)))
        members.insert(draw(st.integers(min_value=0, max_value=len(members))), other)
    members = draw(st.permutations(members))
    space = draw(st.sampled_from(["", " ", "\n", "\t ", "\r\n"]))
    text = "{" + space + ("," + space).join(f"{key}{space}:{space}{value}" for key, value in members) + space + "}"
    return text, name, request_id, has_id


def test_local_io_methods_are_refused_however_encoded():
    @fuzz(700)
    @given(request=requests(blocked_methods), binary=st.booleans())
    @example(request=('{"method":"command/exec","id":1}', "command/exec", 1, True), binary=False)
    @example(request=('{"m\\u0065thod":"fs\\/readFile","id":null}', "fs/readFile", None, True), binary=True)
    def local_io(request, binary):
        count(FRAME_KIND)
        text, method, request_id, _ = request
        verdict = rpc_filter.inspect_client_frame(text.encode() if binary else text)
        assert not verdict.forward
        assert verdict.refusal == "local IO"
        assert verdict.method == method
        if request_id is None:
            assert verdict.reply is None  # a notification (or id null) is refused silently
        else:
            reply = json.loads(verdict.reply or "")
            assert reply["id"] == request_id
            assert reply["error"]["code"] == rpc_filter.METHOD_DISABLED

    run(FRAME_KIND, local_io, 700)


def test_batches_with_a_local_io_request_are_refused_whole():
    @fuzz(200)
    @given(
        blocked=st.lists(requests(blocked_methods), min_size=1, max_size=3),
        benign=st.lists(requests(benign_methods.filter(lambda m: not rpc_filter.is_blocked(m))), max_size=3),
        order=st.randoms(use_true_random=False),
    )
    def batch(blocked, benign, order):
        count(FRAME_KIND)
        elements = blocked + benign
        order.shuffle(elements)
        verdict = rpc_filter.inspect_client_frame("[" + ",".join(text for text, *_ in elements) + "]")
        assert not verdict.forward
        assert verdict.refusal == "local IO"
        with_ids = [
            request_id for _, _, request_id, _ in (e for e in elements if e in blocked) if request_id is not None
        ]
        replies = json.loads(verdict.reply) if verdict.reply else []
        assert [reply["id"] for reply in replies] == with_ids
        assert all(reply["error"]["code"] == rpc_filter.METHOD_DISABLED for reply in replies)

    run(FRAME_KIND, batch, 200)


def test_other_frames_never_raise_and_pass_unless_they_touch_protected_ground():
    frames = st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        json_values.map(json.dumps),
        requests(benign_methods).map(lambda request: request[0]),
        requests(benign_methods).map(lambda request: request[0][: len(request[0]) // 2]),
        st.integers(min_value=1, max_value=3000).map(
            lambda depth: '{"method":"x","params":' + "[" * depth + "]" * depth + "}"
        ),
    )

    @fuzz(500)
    @given(frame=frames)
    @example(frame="\ufeff" + '{"method":"command/exec","id":1}')  # a BOM: not JSON for Python or codex
    def other(frame):
        count(FRAME_KIND)
        verdict = rpc_filter.inspect_client_frame(frame)
        if verdict.forward:
            assert verdict == rpc_filter.FORWARD
            return
        # Refused: a blocked method after all, a protected config key or the local environment.
        assert verdict.refusal in ("local IO", "protected config", "local environment")
        assert verdict.method
        if verdict.refusal == "local IO":
            assert any(rpc_filter.is_blocked(m) for m in verdict.method.split(", "))

    run(FRAME_KIND, other, 500)


# --- the upgrade's Authorization header, built-in mode ------------------------------------------


# The identity interface checks tokens in Django's sync thread, which closes connections past
# their age: the rows must be committed.
@pytest.mark.django_db(transaction=True)
def test_tui_upgrade_headers_are_refused_with_401_or_403_never_503(settings):
    settings.CODEXGW_IDENTITY_BACKEND = "builtin"
    settings.CXG_AGENTSERVER_INTERNAL_URL = "http://127.0.0.1:1"  # ignored in built-in mode
    owner = get_user_model().objects.create_user("fuzz-owner", password="pw")
    leaver = get_user_model().objects.create_user("fuzz-leaver", password="pw")
    workspace = Workspace.objects.create(id="ws-fuzz", name="F")
    Membership.objects.create(workspace=workspace, user=owner, role=Role.OWNER)
    Membership.objects.create(workspace=workspace, user=leaver, role=Role.MEMBER)
    good = tokens.mint(workspace, owner, scopes=["tui"]).token
    no_scope = tokens.mint(workspace, owner, scopes=["sdk", "turns:submit"]).token
    revoked = tokens.mint(workspace, owner)
    tokens.revoke(AccessToken.objects.filter(pk=revoked.record.pk))
    expired = tokens.mint(workspace, owner, expires_in=timedelta(days=1))
    AccessToken.objects.filter(pk=expired.record.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    left = tokens.mint(workspace, leaver).token
    Membership.objects.filter(user=leaver).delete()
    authenticate = async_to_sync(auth.authenticate_tui)
    assert authenticate({"authorization": f"Bearer {good}"}) == auth.Identity(
        str(owner.pk), "ws-fuzz", token_id=good[: len("cxgt_") + 8]
    )

    known = {
        "no-scope": (no_scope, Denial(403, "missing scope: tui")),
        "revoked": (revoked.token, Denial(401, "token revoked")),
        "expired": (expired.token, Denial(401, "token expired")),
        "left": (left, Denial(401, "the token's user is no longer a member of its workspace")),
    }
    latin1 = st.text(st.characters(codec="latin-1"), max_size=80)
    alnum = st.text(
        st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"), min_size=8, max_size=8
    )
    urlsafe = st.text(
        st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), min_size=43, max_size=43
    )

    @fuzz(1000)
    @given(
        case=st.sampled_from(["garbage", "shaped", "truncated", "changed", *known]),
        scheme=st.sampled_from(["Bearer ", "Bearer ", "Bearer ", "bearer ", "Basic ", "", "Bearer  "]),
        garbage=latin1,
        key=alnum,
        secret=urlsafe,
        n=st.integers(min_value=0),
    )
    @example(
        case="garbage", scheme="Bearer ", garbage="cxgt_AAAAAAAA_" + "A" * 43 + "\n", key="A" * 8, secret="A" * 43, n=0
    )
    @example(case="garbage", scheme="Bearer ", garbage="\x00", key="A" * 8, secret="A" * 43, n=0)
    def upgrade(case, scheme, garbage, key, secret, n):
        count(UPGRADE_KIND)
        if case == "garbage":
            token = garbage
        elif case == "shaped":
            token = f"cxgt_{key}_{secret}"
        elif case == "truncated":
            token = good[: n % len(good)]
        elif case == "changed":
            index = 5 + n % (len(good) - 5)
            token = good[:index] + ("B" if good[index] != "B" else "C") + good[index + 1 :]
        else:
            token = known[case][0]
        result = authenticate({"authorization": scheme + token})
        assert isinstance(result, Denial)
        assert result.status in (401, 403)
        header = scheme + token
        if not header.startswith("Bearer ") or not header[len("Bearer ") :]:
            assert result == Denial(401, "missing Bearer")
        elif scheme != "Bearer ":
            assert result == Denial(401, "not a codexgw access token")
        elif case in known:
            assert result == known[case][1]
        elif case in ("shaped", "changed") or tokens._TOKEN.fullmatch(token):
            assert result == Denial(401, "unknown token")
        else:
            assert result == Denial(401, "not a codexgw access token")

    run(UPGRADE_KIND, upgrade, 1000)
