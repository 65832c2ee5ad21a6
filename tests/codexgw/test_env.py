"""Typed environment readers fail loudly on bad values."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from codexgw import env


def test_bool_values():
    for raw in ("1", "true", "YES", "on"):
        assert env.env_bool("X", False, environ={"X": raw}) is True
    for raw in ("0", "false", "No", "off"):
        assert env.env_bool("X", True, environ={"X": raw}) is False
    assert env.env_bool("X", True, environ={}) is True
    assert env.env_bool("X", True, environ={"X": "  "}) is True
    with pytest.raises(ImproperlyConfigured, match="X='maybe' is not a boolean"):
        env.env_bool("X", False, environ={"X": "maybe"})


def test_int_values_and_bounds():
    assert env.env_int("P", 6060, environ={"P": "7070"}) == 7070
    assert env.env_int("P", 6060, environ={}) == 6060
    with pytest.raises(ImproperlyConfigured, match="P='sixty' is not an integer"):
        env.env_int("P", 1, environ={"P": "sixty"})
    with pytest.raises(ImproperlyConfigured, match="below the minimum"):
        env.env_int("P", 1, minimum=1, environ={"P": "0"})
    with pytest.raises(ImproperlyConfigured, match="above the maximum"):
        env.env_int("P", 1, maximum=10, environ={"P": "11"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300", 300), ("300s", 300), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1.5s", 1.5), ("2h", 7200)],
)
def test_go_durations(text, seconds):
    assert env.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "m5", "5m junk", "1h 30m", "-"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="duration"):
        env.parse_duration(text)


def test_duration_env():
    assert env.env_duration("T", 10, environ={"T": "5m"}) == 300
    with pytest.raises(ImproperlyConfigured, match="T='soon' is not a duration"):
        env.env_duration("T", 10, environ={"T": "soon"})
    with pytest.raises(ImproperlyConfigured, match="below the minimum"):
        env.env_duration("T", 10, minimum=1, environ={"T": "0s"})


def test_list_and_choice():
    assert env.env_list("L", ["a"], environ={"L": "exec, app,,"}) == ["exec", "app"]
    assert env.env_list("L", ["a"], environ={}) == ["a"]
    assert env.env_choice("C", "info", {"info", "debug"}, environ={"C": "DEBUG"}) == "debug"
    with pytest.raises(ImproperlyConfigured, match="must be one of"):
        env.env_choice("C", "info", {"info", "debug"}, environ={"C": "loud"})


def test_secret_from_file(tmp_path):
    path = tmp_path / "secret"
    path.write_text("from-file\n")
    assert env.env_secret("S", environ={"S_FILE": str(path)}) == "from-file"
    assert env.env_secret("S", environ={"S": "direct"}) == "direct"
    assert env.env_secret("S", environ={}) == ""
    with pytest.raises(ImproperlyConfigured, match="either S or S_FILE"):
        env.env_secret("S", environ={"S": "a", "S_FILE": str(path)})
    with pytest.raises(ImproperlyConfigured, match="cannot be read"):
        env.env_secret("S", environ={"S_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("")
    with pytest.raises(ImproperlyConfigured, match="is empty"):
        env.env_secret("S", environ={"S_FILE": str(tmp_path / "empty")})


def test_every_variable_read_by_settings_is_documented():
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    source = (repo / "codexgw" / "settings.py").read_text() + (repo / "codexgw" / "local_secrets.py").read_text()
    read = set(re.findall(r'"((?:CXG|CODEXGW|DJANGO)_[A-Z0-9_]+|DATABASE_URL|REDIS_URL)"', source))
    documented = (repo / ".env.example").read_text()
    assert read, "no variables found: the scan is broken"
    missing = sorted(name for name in read if name not in documented)
    assert missing == []
