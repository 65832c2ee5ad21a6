"""base64url as tokens and tickets use it: one spelling per value."""

from __future__ import annotations

import pytest

from executors import b64


def test_round_trip_of_every_length_mod_three():
    for data in (b"", b"\x00", b"\xff\xfe", b"\x01\x02\x03", bytes(range(32))):
        assert b64.decode(b64.encode(data)) == data


def _respellings(text: str) -> list[str]:
    """Other last characters that a lenient decoder reads as the same bytes."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused_bits = {2: 4, 3: 2}[len(text) % 4]
    last = alphabet.index(text[-1])
    base = last & ~((1 << unused_bits) - 1)
    return [text[:-1] + alphabet[base + low] for low in range(1 << unused_bits) if base + low != last]


@pytest.mark.parametrize("size", [1, 2, 32])
def test_a_last_character_with_unused_bits_set_is_refused(size):
    # A 32-byte MAC is 43 characters whose last carries two unused bits: four spellings decode alike.
    text = b64.encode(bytes(range(size)))
    assert _respellings(text)
    for other in _respellings(text):
        with pytest.raises(ValueError, match="canonical"):
            b64.decode(other)


@pytest.mark.parametrize("text", ["abc=", "ab\n", "abc\n", "a b", "a+/b", "abcde", "é"])
def test_padding_whitespace_and_foreign_characters_are_refused(text):
    with pytest.raises(ValueError, match="not base64url without padding"):
        b64.decode(text)
