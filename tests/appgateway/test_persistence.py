"""Packing, storing and (defensively) restoring CODEX_HOME archives."""

from __future__ import annotations

import io
import os
import sqlite3
import tarfile
from pathlib import Path

import pytest

from appgateway import persistence
from appgateway.persistence import PersistenceError, extract, pack


@pytest.fixture
def store(settings, tmp_path: Path) -> Path:
    location = tmp_path / "archives"
    settings.STORAGES = {
        **settings.STORAGES,
        "codexhome": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(location)}},
    }
    return location


def make_home(path: Path) -> Path:
    (path / "sessions" / "2026").mkdir(parents=True)
    (path / "sessions" / "2026" / "rollout-1.jsonl").write_text('{"a":1}\n')
    (path / "installation_id").write_text("abc")
    (path / "config.toml").write_text("secret = 'cap-token'\n")
    (path / "environments.toml").write_text("include_local = false\n")
    (path / "auth.json").write_text('{"token":"t"}')
    (path / "tmp" / "arg0").mkdir(parents=True)
    (path / "tmp" / "arg0" / "helper").write_text("x")
    (path / "link-out").symlink_to("/etc/passwd")
    (path / "dir-link").symlink_to(path / "sessions")
    os.mkfifo(path / "a-fifo")
    return path


def names_in(blob: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as archive:
        return sorted(archive.getnames())


def test_pack_keeps_state_and_leaves_out_config_secrets_scratch_and_specials(tmp_path):
    home = make_home(tmp_path / "home")
    out = io.BytesIO()
    pack(home, out)
    assert names_in(out.getvalue()) == ["installation_id", "sessions", "sessions/2026", "sessions/2026/rollout-1.jsonl"]
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r:gz") as archive:
        for member in archive.getmembers():
            assert not member.name.startswith("/")
            assert member.mode == (0o700 if member.isdir() else 0o600)


def test_persist_then_restore_round_trips_with_clamped_modes(store, tmp_path):
    home = make_home(tmp_path / "home")
    (home / "installation_id").chmod(0o755)
    persistence.persist("ws-1", home)
    assert (store / "codex-app-gateway" / "ws-1.tar.gz").is_file()
    assert [p.name for p in (store / "codex-app-gateway").iterdir()] == ["ws-1.tar.gz"]  # no partial left

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    result = persistence.restore("ws-1", fresh)
    assert result is not None
    assert result.skipped == []
    assert (fresh / "sessions" / "2026" / "rollout-1.jsonl").read_text() == '{"a":1}\n'
    assert (fresh / "installation_id").stat().st_mode & 0o777 == 0o600
    assert (fresh / "sessions").stat().st_mode & 0o777 == 0o700
    assert not (fresh / "config.toml").exists()
    assert not (fresh / "environments.toml").exists()
    assert not (fresh / "auth.json").exists()


def test_restore_without_an_archive_is_none(store, tmp_path):
    assert persistence.restore("ws-new", tmp_path) is None


def test_a_live_sqlite_database_is_snapshotted_consistently(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    writer = sqlite3.connect(home / "state_5.sqlite")
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")  # keep every committed row in the -wal file
    writer.execute("CREATE TABLE threads (id TEXT)")
    writer.executemany("INSERT INTO threads VALUES (?)", [(f"t{i}",) for i in range(100)])
    writer.commit()
    writer.execute("INSERT INTO threads VALUES ('uncommitted')")  # an open write transaction
    assert (home / "state_5.sqlite-wal").stat().st_size > 0
    try:
        out = io.BytesIO()
        pack(home, out)
    finally:
        writer.rollback()
        writer.close()
    assert names_in(out.getvalue()) == ["state_5.sqlite"]
    restored = tmp_path / "restored"
    restored.mkdir()
    extract(io.BytesIO(out.getvalue()), restored)
    reader = sqlite3.connect(restored / "state_5.sqlite")
    try:
        rows = [row[0] for row in reader.execute("SELECT id FROM threads")]
    finally:
        reader.close()
    assert len(rows) == 100
    assert "uncommitted" not in rows


def test_a_failed_upload_keeps_the_previous_archive(store, tmp_path):
    home = make_home(tmp_path / "home")
    persistence.persist("ws-1", home)
    final = store / "codex-app-gateway" / "ws-1.tar.gz"
    before = final.read_bytes()

    class Exploding(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell() > 10:
                raise OSError("disk full")
            return super().read(16)

    with pytest.raises(OSError, match="disk full"):
        persistence._store_atomically(persistence.storage(), persistence.archive_name("ws-1"), Exploding(b"x" * 100))
    assert final.read_bytes() == before
    assert [p.name for p in final.parent.iterdir()] == ["ws-1.tar.gz"]


# --- crafted archives: each unsafe member is refused, the safe ones still land ----------------


def crafted(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(info)
    out.seek(0)
    return out


def member(name: str, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("bad", "data", "reason"),
    [
        (member("/tmp/abs-escape"), b"x", "absolute path"),
        (member("../escape"), b"x", "parent reference"),
        (member("sessions/../../escape"), b"x", "parent reference"),
        (member("evil-link", tarfile.SYMTYPE, link="/etc/passwd"), None, "symlink"),
        (member("evil-hard", tarfile.LNKTYPE, link="/etc/passwd"), None, "hardlink"),
        (member("evil-char", tarfile.CHRTYPE), None, "device"),
        (member("evil-block", tarfile.BLKTYPE), None, "device"),
        (member("evil-fifo", tarfile.FIFOTYPE), None, "fifo"),
        (member("config.toml"), b"model = 'attacker'", "excluded name"),
        (member("auth.json"), b"{}", "excluded name"),
    ],
)
def test_unsafe_members_are_skipped(tmp_path, bad, data, reason):
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = crafted(
        (member("sessions", tarfile.DIRTYPE, mode=0o777), None),
        (bad, data),
        (member("sessions/ok.jsonl", mode=0o4777), b"fine"),
    )
    result = extract(archive, dest)
    assert len(result.skipped) == 1
    assert result.skipped[0][0] == bad.name
    assert reason in result.skipped[0][1]
    assert result.extracted == 2
    ok = dest / "sessions" / "ok.jsonl"
    assert ok.read_bytes() == b"fine"
    assert ok.stat().st_mode & 0o7777 == 0o600
    assert (dest / "sessions").stat().st_mode & 0o777 == 0o700
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == ["sessions", "sessions/ok.jsonl"]
    assert not (tmp_path / "escape").exists()
    assert not Path("/tmp/abs-escape").exists()


def test_a_symlink_planted_by_an_earlier_member_is_never_followed(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = crafted(
        (member("sessions", tarfile.SYMTYPE, link=str(outside)), None),
        (member("sessions/through-link"), b"x"),
    )
    result = extract(archive, dest)
    assert [name for name, _ in result.skipped] == ["sessions"]
    assert list(outside.iterdir()) == []
    assert (dest / "sessions" / "through-link").read_bytes() == b"x"  # a real directory was made instead


def test_a_file_in_the_way_of_a_directory_is_skipped(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = crafted((member("sessions"), b"file"), (member("sessions/child"), b"x"))
    result = extract(archive, dest)
    assert result.skipped == [("sessions/child", "path blocked by a non-directory")]


def test_a_corrupt_archive_is_an_error(tmp_path):
    with pytest.raises(PersistenceError, match="cannot be read"):
        extract(io.BytesIO(b"not a tarball at all"), tmp_path)
