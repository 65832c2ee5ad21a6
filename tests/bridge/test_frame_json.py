"""Frames decoded for the multiplexer and encoded again: exact round trips, bulk strings of an
executor's large frame passed through as their text, malformed frames refused."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import frame_json
from bridge.frame_json import RAW_STRING_CHARS, RawJSON
from bridge.multiplexer import ToBridge
from bridge.protocol import INVALID_REQUEST
from tests.bridge.test_multiplexer import ready_rig


def test_frames_orjson_cannot_handle_still_round_trip():
    huge = '{"id":1,"result":{"size":123456789012345678901234567890}}'
    assert frame_json.decode(huge) == {"id": 1, "result": {"size": 123456789012345678901234567890}}
    assert frame_json.decode(frame_json.encode(frame_json.decode(huge))) == frame_json.decode(huge)
    assert frame_json.decode("{not json") is None
    assert frame_json.decode(frame_json.encode({"text": "é€😀", "n": 1})) == {"text": "é€😀", "n": 1}


def test_a_frame_nested_past_the_recursion_limit_is_refused_not_raised():
    """A client's ``[[[[…`` (100 KB, well inside a frame) once raised RecursionError out of the
    decoder and ended the executor session every client of that executor shares."""
    assert frame_json.decode("[" * 100_000) is None
    nested = '{"id":1,"result":{"deep":' + "[" * 100_000 + "]" * 100_000 + "}}"
    assert frame_json.decode_executor_frame(nested) is None
    rig = ready_rig()
    rig.attach("a")
    [reply] = rig.mux.bridge_message("a", frame_json.decode("[" * 100_000))
    assert isinstance(reply, ToBridge)
    assert reply.message["error"]["code"] == INVALID_REQUEST


def read_file_response(request_id: int, size: int) -> tuple[str, str]:
    data = base64.b64encode(os.urandom(size)).decode()
    return json.dumps({"id": request_id, "result": {"dataBase64": data}}, separators=(",", ":")), data


def test_a_large_executor_response_keeps_its_bulk_string_as_text():
    text, data = read_file_response(7, 1 << 20)
    decoded = frame_json.decode_executor_frame(text)
    assert decoded["id"] == 7
    assert decoded["result"]["dataBase64"] == RawJSON(json.dumps(data))
    # Encoded again with another id: exactly the same bytes for the data, nothing else changed.
    decoded["id"] = 123
    assert frame_json.encode(decoded) == text.replace('{"id":7,', '{"id":123,', 1)
    # A 64-bit-overflowing integer elsewhere takes the standard library's path, which still works.
    decoded["result"]["big"] = 1 << 70
    assert json.loads(frame_json.encode(decoded)) == {"id": 123, "result": {"dataBase64": data, "big": 1 << 70}}


def test_bulk_strings_are_joined_into_the_envelope_in_their_places():
    first, second = RawJSON(json.dumps("a" * 100)), RawJSON(json.dumps("b\u00e9" * 50))
    result: dict[str, Any] = {"x": first, "n": 2, "y": second, "name": "caf\u00e9"}
    message = {"id": 1, "result": result}
    expected = '{"id":1,"result":{"x":' + first.text + ',"n":2,"y":' + second.text + ',"name":"caf\u00e9"}}'
    assert frame_json.encode(message) == expected
    # A frame that happens to hold the placeholder's text is still written exactly (the slower way).
    result["name"] = frame_json._SLOT
    assert json.loads(frame_json.encode(message))["result"] == {
        "x": "a" * 100,
        "n": 2,
        "y": "b\u00e9" * 50,
        "name": frame_json._SLOT,
    }


def test_the_multiplexer_rewrites_the_id_of_a_large_read_without_touching_the_data():
    rig = ready_rig()
    rig.attach("a")
    sent = rig.forward("a", {"id": "client-9", "method": "fs/readFile", "params": {"path": "/x"}})
    text, data = read_file_response(sent["id"], 1 << 20)
    [reply] = rig.mux.executor_message(frame_json.decode_executor_frame(text))
    assert isinstance(reply, ToBridge)
    assert reply.conn_id == "a"
    assert frame_json.encode(reply.message) == '{"id":"client-9","result":{"dataBase64":' + json.dumps(data) + "}}"


def test_escaped_quotes_whitespace_and_short_strings_decode_exactly():
    bulk = 'a\\"b\\\\' * (RAW_STRING_CHARS // 4)  # escaped quotes and backslashes inside
    text = '{ "id" : 1 ,\n "result" : { "dataBase64" : "' + bulk + '" , "n": [1, {"k": "v"}], "s": "é" } }'
    text += " " * frame_json.LAZY_FRAME_CHARS
    decoded = frame_json.decode_executor_frame(text)
    assert decoded["result"]["n"] == [1, {"k": "v"}]
    assert decoded["result"]["s"] == "é"
    assert isinstance(decoded["result"]["dataBase64"], RawJSON)
    assert json.loads(frame_json.encode(decoded)) == json.loads(text)


@pytest.mark.parametrize(
    "broken",
    [
        '{"id":1,"result":{"dataBase64":"' + "A" * RAW_STRING_CHARS,  # unterminated
        '{"id":1,"result":{"dataBase64":"' + "A" * RAW_STRING_CHARS + '"}}}',  # trailing
        '{"id":1 "result":{"dataBase64":"' + "A" * RAW_STRING_CHARS + '"}}',  # no comma
        '{"id":1,"result":{dataBase64:"' + "A" * RAW_STRING_CHARS + '"}}',  # unquoted key
        '["' + "A" * RAW_STRING_CHARS + '"]',  # not an object
    ],
)
def test_malformed_large_executor_frames_are_refused(broken):
    broken += " " * frame_json.LAZY_FRAME_CHARS
    expected = None if not broken.startswith("[") else ["A" * RAW_STRING_CHARS]
    decoded = frame_json.decode_executor_frame(broken)
    if expected is None:
        assert decoded is None
    else:  # not an object: decoded in full, the multiplexer refuses it as it does any array
        assert decoded == expected


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )
)
def test_decoding_two_levels_deep_gives_what_full_decoding_gives(value):
    frame = {"id": 1, "result": {"value": value, "dataBase64": "x" * frame_json.LAZY_FRAME_CHARS}}
    text = json.dumps(frame, ensure_ascii=False)
    decoded = frame_json.decode_executor_frame(text)
    assert json.loads(frame_json.encode(decoded)) == frame
    assert isinstance(decoded["result"]["dataBase64"], RawJSON)


_EXEC_SERVER_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)  # serde_json's integers
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    st.recursive(
        _EXEC_SERVER_SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )
)
def test_a_short_executor_frame_reads_as_the_standard_library_reads_it(value: Any) -> None:
    text = json.dumps({"method": "process/output", "params": {"value": value}}, ensure_ascii=False)
    assert len(text) < frame_json.LAZY_FRAME_CHARS
    assert frame_json.decode_executor_frame(text) == json.loads(text)


@pytest.mark.parametrize("text", ['{"id":1,"result":"\\ud800"}', '{"id":1,"result":[NaN,-Infinity]}'])
def test_what_orjson_refuses_in_an_executor_frame_gets_the_standard_librarys_answer(text: str) -> None:
    # Compared as text: NaN is not equal to itself.
    assert json.dumps(frame_json.decode_executor_frame(text)) == json.dumps(json.loads(text))


def test_nesting_is_counted_in_objects_and_arrays_not_in_strings() -> None:
    def frame(levels: int) -> dict[str, Any]:
        value: Any = {}
        for _ in range(levels - 1):
            value = [value]
        return {"id": 1, "params": value}  # the frame's object, then levels of arrays and objects

    for levels in (3, 126, 127):  # the frame nests levels + 1 deep
        message = frame(levels)
        text = json.dumps(message)
        assert frame_json.nested_deeper_than(127, text, message) is (levels + 1 > 127)
    flat = {"id": 1, "params": {"code": "[" * 500 + "{" * 500}}
    assert frame_json.nested_deeper_than(127, json.dumps(flat), flat) is False


def test_only_bulk_members_are_kept_raw_however_long_another_string_is() -> None:
    """The multiplexer reads handles and messages: a client may name a process with 40 K
    characters, and its events must still find their way back to it."""
    long_id = "v1." + "p" * 40_000
    exited = json.dumps({"method": "process/exited", "params": {"processId": long_id, "seq": 3}})
    assert frame_json.decode_executor_frame(exited) == {
        "method": "process/exited",
        "params": {"processId": long_id, "seq": 3},
    }
    output = {"processId": long_id, "seq": 4, "stream": "stdout", "chunk": "QQ==" * 10_000}
    decoded = frame_json.decode_executor_frame(json.dumps({"method": "process/output", "params": output}))
    assert decoded["params"]["processId"] == long_id
    assert decoded["params"]["chunk"] == RawJSON(json.dumps(output["chunk"]))


def test_a_long_frame_with_no_bulk_member_is_read_whole() -> None:
    listing = {"id": 7, "result": {"entries": [{"fileName": f"f-{n}.txt", "isFile": True} for n in range(3000)]}}
    text = json.dumps(listing, separators=(",", ":"))
    assert len(text) > frame_json.LAZY_FRAME_CHARS
    assert frame_json.decode_executor_frame(text) == listing
    assert frame_json.encode(frame_json.decode_executor_frame(text)) == text


def test_a_bulk_member_is_looked_for_near_the_start_and_one_found_later_is_decoded_in_full():
    """The name is looked for in the frame's first ``_BULK_WINDOW`` characters only (scanning an
    8 MiB read's 11 MB for a name it lacks cost 5 ms): past them, the full decode gives the same."""
    bulk = "QUJD" * frame_json.LAZY_FRAME_CHARS
    near = {"id": 1, "result": {"dataBase64": bulk}}
    far = {"id": 2, "result": {"pad": "p" * frame_json._BULK_WINDOW, "dataBase64": bulk}}
    decoded_near = frame_json.decode_executor_frame(json.dumps(near))
    decoded_far = frame_json.decode_executor_frame(json.dumps(far))
    assert isinstance(decoded_near["result"]["dataBase64"], RawJSON)
    assert decoded_far == far  # a plain str: decoded in full
    assert json.loads(frame_json.encode(decoded_near)) == near
    assert json.loads(frame_json.encode(decoded_far)) == far
