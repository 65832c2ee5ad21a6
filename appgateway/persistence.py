"""Persisting a workspace's CODEX_HOME (threads, rollouts, codex's sqlite state) between spawns.

Format: one gzip-compressed tar of the home's directories and regular files, relative paths,
stored as ``codex-app-gateway/<workspace_id>.tar.gz`` in the ``codexhome`` storage of Django's
``STORAGES`` (the local filesystem by default, S3 when ``CXG_S3_BUCKET`` is set). The name and
format are those of the Go gateway, so its archives restore here.

* Never packed: ``config.toml`` and ``environments.toml`` (rendered fresh on every spawn),
  codex's credential files and its per-run ``tmp/``; symlinks, sockets and other special files.
* SQLite databases are copied with SQLite's backup API from a read-only connection: a
  consistent snapshot (including the write-ahead log) even while codex is writing, which a
  plain file copy of a live database and its ``-wal`` would not be.
* The archive is streamed through a temporary file, never built in memory, and stored so that
  a crash never leaves a partial archive under the final name: object stores (S3) only make an
  upload visible once it is complete; on a filesystem it is written under a temporary name,
  fsync-ed, then renamed over the old one.
* Restore is defensive: members with absolute paths, ``..``, links, devices or fifos, and the
  never-packed names are skipped (and reported); directories become 0700 and files 0600.

Everything here is blocking I/O: async callers run it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import sqlite3
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import quote

from django.core.files import File
from django.core.files.storage import Storage, storages

from appgateway.codexhome import CONFIG_FILE, ENVIRONMENTS_FILE, validate_workspace_id

logger = logging.getLogger(__name__)

STORAGE_ALIAS = "codexhome"
ARCHIVE_PREFIX = "codex-app-gateway"
# Top-level names never packed nor restored: the rendered config (and its temporary), codex's
# login credentials, and per-run scratch space (helper binaries, sockets).
EXCLUDED = frozenset(
    {
        CONFIG_FILE,
        f".{CONFIG_FILE}.tmp",
        ENVIRONMENTS_FILE,
        f".{ENVIRONMENTS_FILE}.tmp",
        "auth.json",
        ".credentials.json",
        "tmp",
    }
)
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SQLITE_SIDECARS = ("-wal", "-shm", "-journal")
_CHUNK = 1024 * 1024


class PersistenceError(RuntimeError):
    pass


@dataclass
class RestoreResult:
    extracted: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (member name, reason)


def storage() -> Storage:
    return storages[STORAGE_ALIAS]


def archive_name(workspace_id: str) -> str:
    return f"{ARCHIVE_PREFIX}/{validate_workspace_id(workspace_id)}.tar.gz"


# --- packing ----------------------------------------------------------------------------------


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def _snapshot_sqlite(path: Path, target: Path) -> bool:
    """A consistent copy of a (possibly live) database into ``target``; False if SQLite refused."""
    try:
        with (
            contextlib.closing(sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=5)) as source,
            contextlib.closing(sqlite3.connect(target)) as destination,
        ):
            source.backup(destination)  # one step: a single read transaction, a consistent view
    except sqlite3.Error as exc:
        logger.warning(
            "sqlite snapshot failed, copying the files instead", extra={"path": str(path), "error": str(exc)}
        )
        return False
    return True


def _tarinfo(name: str, *, directory: bool, size: int = 0, mtime: float = 0.0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o700 if directory else 0o600
    info.size = size
    info.mtime = int(mtime)
    return info


def _add_file(archive: tarfile.TarFile, path: Path, name: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            return
        archive.addfile(_tarinfo(name, directory=False, size=status.st_size, mtime=status.st_mtime), handle)


def pack(home: Path, out: IO[bytes]) -> int:
    """Write ``home`` as tar+gzip to ``out``; returns the number of members written."""
    count = 0
    with tempfile.TemporaryDirectory(prefix="cxg-pack-") as scratch, tarfile.open(fileobj=out, mode="w:gz") as archive:
        for directory, dirnames, filenames in os.walk(home):
            relative_dir = Path(directory).relative_to(home)
            if relative_dir == Path("."):
                dirnames[:] = [d for d in dirnames if d not in EXCLUDED]
                filenames = [f for f in filenames if f not in EXCLUDED]
            # os.walk lists symlinks to directories among dirnames; never descend into or pack them.
            dirnames[:] = sorted(d for d in dirnames if not (Path(directory) / d).is_symlink())
            for dirname in dirnames:
                archive.addfile(_tarinfo((relative_dir / dirname).as_posix(), directory=True))
                count += 1
            snapshotted: set[str] = set()
            for filename in sorted(filenames):
                path = Path(directory) / filename
                name = (relative_dir / filename).as_posix()
                if filename.endswith(_SQLITE_SIDECARS) and filename.rsplit("-", 1)[0] in snapshotted:
                    continue  # its database's snapshot already contains the log's content
                try:
                    if not stat.S_ISREG(path.lstat().st_mode):
                        continue
                    if _is_sqlite(path):
                        copy = Path(scratch) / secrets.token_hex(8)
                        if _snapshot_sqlite(path, copy):
                            info = _tarinfo(name, directory=False, size=copy.stat().st_size, mtime=path.stat().st_mtime)
                            with copy.open("rb") as snapshot:
                                archive.addfile(info, snapshot)
                            copy.unlink()
                            snapshotted.add(filename)
                            count += 1
                            continue
                    _add_file(archive, path, name)
                    count += 1
                except FileNotFoundError:
                    continue  # codex removed it while we walked a live home
    return count


def _store_atomically(target: Storage, name: str, content: IO[bytes]) -> None:
    try:
        final_path = target.path(name)
    except NotImplementedError:
        # Remote object store: a PUT (or a multipart upload) becomes visible whole or not at all.
        saved = target.save(name, File(content, name=name))
        if saved != name:
            raise PersistenceError(f"storage saved {name!r} as {saved!r}: enable overwriting") from None
        return
    partial = f"{name}.{secrets.token_hex(8)}.partial"
    partial_path = target.path(partial)
    try:
        # FileSystemStorage writes in place and leaves what it wrote when the source fails.
        if target.save(partial, File(content, name=name)) != partial:
            raise PersistenceError(f"storage renamed {partial!r}")
        with open(partial_path, "rb") as written:
            os.fsync(written.fileno())
        os.replace(partial_path, final_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial_path)
        raise


def persist(workspace_id: str, home: Path) -> int:
    """Pack ``home`` and store it as the workspace's archive; returns the member count."""
    name = archive_name(workspace_id)
    with tempfile.TemporaryFile(prefix="cxg-home-") as buffer:
        count = pack(home, buffer)
        buffer.seek(0)
        _store_atomically(storage(), name, buffer)
    logger.info("persisted CODEX_HOME", extra={"workspace_id": workspace_id, "members": count})
    return count


# --- restoring --------------------------------------------------------------------------------


def _member_parts(name: str) -> tuple[str, ...] | str:
    """The member's path components, or the reason it is refused."""
    if "\x00" in name or "\\" in name:
        return "invalid characters"
    if name.startswith("/"):
        return "absolute path"
    parts = tuple(part for part in PurePosixPath(name).parts if part != ".")
    if not parts:
        return "empty path"
    if ".." in parts:
        return "parent reference (..)"
    if parts[0] in EXCLUDED:
        return "excluded name"
    return parts


def _refusal(member: tarfile.TarInfo) -> str | None:
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    if not (member.isdir() or member.isreg()):
        return "unsupported member type"
    return None


def _directory(dest: Path, parts: tuple[str, ...]) -> Path | None:
    """Create ``dest/parts...`` (each 0700), refusing to pass through anything but real directories."""
    current = dest
    for part in parts:
        current = current / part
        try:
            mode = current.lstat().st_mode
        except FileNotFoundError:
            current.mkdir(mode=0o700)
            os.chmod(current, 0o700)
            continue
        if not stat.S_ISDIR(mode):
            return None
    return current


def extract(archive_file: IO[bytes], dest: Path) -> RestoreResult:
    """Extract a tar+gzip stream into ``dest`` (an existing directory), skipping unsafe members."""
    result = RestoreResult()
    try:
        with tarfile.open(fileobj=archive_file, mode="r|gz") as archive:
            for member in archive:
                parts = _member_parts(member.name)
                if isinstance(parts, str):
                    result.skipped.append((member.name, parts))
                    continue
                reason = _refusal(member)
                if reason is not None:
                    result.skipped.append((member.name, reason))
                    continue
                if member.isdir():
                    if _directory(dest, parts) is None:
                        result.skipped.append((member.name, "path blocked by a non-directory"))
                        continue
                    result.extracted += 1
                    continue
                parent = _directory(dest, parts[:-1])
                source = archive.extractfile(member)
                if parent is None or source is None:
                    result.skipped.append((member.name, "path blocked by a non-directory"))
                    continue
                target = parent / parts[-1]
                try:
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                except OSError as exc:
                    result.skipped.append((member.name, f"cannot write: {exc.strerror}"))
                    continue
                with os.fdopen(fd, "wb") as handle:
                    shutil.copyfileobj(source, handle, _CHUNK)
                    os.fchmod(handle.fileno(), 0o600)
                os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)
                result.extracted += 1
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise PersistenceError(f"archive cannot be read: {exc}") from exc
    for name, reason in result.skipped:
        logger.warning("skipped archive member", extra={"member": name, "reason": reason})
    return result


def restore(workspace_id: str, home: Path) -> RestoreResult | None:
    """Extract the workspace's archive into ``home``; None when nothing was stored yet."""
    name = archive_name(workspace_id)
    target = storage()
    if not target.exists(name):
        return None
    with target.open(name, "rb") as handle:
        result = extract(handle, home)
    logger.info(
        "restored CODEX_HOME",
        extra={"workspace_id": workspace_id, "members": result.extracted, "skipped": len(result.skipped)},
    )
    return result
