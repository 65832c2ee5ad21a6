"""Typed environment readers fail loudly on bad values."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from codexgw import env


@pytest.fixture
def set_env(monkeypatch):
    """Sets exactly the given variables, of those these tests read."""

    def set_only(**values: str) -> None:
        for name in ("X", "P", "T", "L", "C", "S", "S_FILE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_only


def test_bool_values(set_env):
    for raw in ("1", "true", "YES", "on"):
        set_env(X=raw)
        assert env.env_bool("X", False) is True
    for raw in ("0", "false", "No", "off"):
        set_env(X=raw)
        assert env.env_bool("X", True) is False
    set_env()
    assert env.env_bool("X", True) is True
    set_env(X="  ")
    assert env.env_bool("X", True) is True
    set_env(X="maybe")
    with pytest.raises(ImproperlyConfigured, match="X='maybe' is not a boolean"):
        env.env_bool("X", False)


def test_int_values_and_bounds(set_env):
    set_env(P="7070")
    assert env.env_int("P", 6060) == 7070
    set_env()
    assert env.env_int("P", 6060) == 6060
    set_env(P="sixty")
    with pytest.raises(ImproperlyConfigured, match="P='sixty' is not an integer"):
        env.env_int("P", 1)
    set_env(P="0")
    with pytest.raises(ImproperlyConfigured, match="below the minimum"):
        env.env_int("P", 1, minimum=1)
    set_env(P="11")
    with pytest.raises(ImproperlyConfigured, match="above the maximum"):
        env.env_int("P", 1, maximum=10)


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


def test_duration_env(set_env):
    set_env(T="5m")
    assert env.env_duration("T", 10) == 300
    set_env(T="soon")
    with pytest.raises(ImproperlyConfigured, match="T='soon' is not a duration"):
        env.env_duration("T", 10)
    set_env(T="0s")
    with pytest.raises(ImproperlyConfigured, match="below the minimum"):
        env.env_duration("T", 10, minimum=1)


def test_list_and_choice(set_env):
    set_env(L="exec, app,,")
    assert env.env_list("L", ["a"]) == ["exec", "app"]
    set_env()
    assert env.env_list("L", ["a"]) == ["a"]
    set_env(C="DEBUG")
    assert env.env_choice("C", "info", {"info", "debug"}) == "debug"
    set_env(C="loud")
    with pytest.raises(ImproperlyConfigured, match="must be one of"):
        env.env_choice("C", "info", {"info", "debug"})


def test_secret_from_file(tmp_path, set_env):
    path = tmp_path / "secret"
    path.write_text("from-file\n")
    set_env(S_FILE=str(path))
    assert env.env_secret("S") == "from-file"
    set_env(S="direct")
    assert env.env_secret("S") == "direct"
    set_env()
    assert env.env_secret("S") == ""
    set_env(S="a", S_FILE=str(path))
    with pytest.raises(ImproperlyConfigured, match="either S or S_FILE"):
        env.env_secret("S")
    set_env(S_FILE=str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="cannot be read"):
        env.env_secret("S")
    (tmp_path / "empty").write_text("")
    set_env(S_FILE=str(tmp_path / "empty"))
    with pytest.raises(ImproperlyConfigured, match="is empty"):
        env.env_secret("S")


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
