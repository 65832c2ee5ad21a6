"""What runs on this machine, read from ``/proc`` (the tests' executors run here too)."""

from __future__ import annotations

from pathlib import Path


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pids_of(program: str, argument: str) -> list[int]:
    """The pids of the processes running ``program`` with ``argument`` among their arguments."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if Path(argv[0].decode(errors="replace")).name == program and argument.encode() in argv[1:]:
            found.append(int(entry.name))
    return found
