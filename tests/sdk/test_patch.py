"""``sdk.tools.patch``: the parser and the applier (pure), and the tool against an in-memory
executor that answers ``fs/*`` the way exec-server does (codex-wire §A.6)."""

from __future__ import annotations

import base64
import posixpath
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import pytest

from bridge.client import BridgeClient, BridgeRPCError
from sdk.resolver import NameResolver
from sdk.tools import patch as patch_module
from sdk.tools.base import ToolContext, ToolResult
from sdk.tools.files import apply_patch
from sdk.tools.patch import BridgeCaller, resolve_path
from sdk.tools.patch_hunks import apply_hunks
from sdk.tools.patch_text import (
    AddFile,
    DeleteFile,
    Hunk,
    HunkLine,
    PatchApplyError,
    PatchParseError,
    UpdateFile,
    parse_patch,
)
from sdk.tools.sessions import InMemoryProcessSessions


def _bridge_client_is_a_bridge_caller(client: BridgeClient) -> BridgeCaller:
    return client  # checked by mypy: the real client satisfies the Protocol the tool is written to


def patch(*lines: str) -> str:
    return "\n".join(["*** Begin Patch", *lines, "*** End Patch"]) + "\n"


async def run_patch(executor: FakeExecutor, text: str, cwd: str | None = None) -> ToolResult:
    """The ``apply_patch`` tool with ``executor`` as the environment "box"."""
    return await apply_patch(tool_context(executor), {"environment_id": "box", "patch": text, "cwd": cwd})


def hunks_of(text: str) -> tuple[Hunk, ...]:
    (change,) = parse_patch(text)
    assert isinstance(change, UpdateFile)
    return change.hunks


def update(original: str, *lines: str, path: str = "/f") -> str:
    """Apply an Update File section (its lines given without the header) to ``original``."""
    return apply_hunks(original, hunks_of(patch(f"*** Update File: {path}", *lines)), path)


# --- parser ------------------------------------------------------------------------------------


def test_parse_every_kind_of_change_with_line_numbers():
    changes = parse_patch(
        patch(
            "*** Add File: /w/new.txt",
            "+first",
            "+",
            "+*** not a header: content",
            "*** Delete File: /w/old.txt",
            "*** Update File: /w/a.py",
            "*** Move to: /w/b.py",
            "@@ def f():",
            " context",
            "-old",
            "+new",
            "*** End of File",
        )
    )
    assert changes == [
        AddFile("/w/new.txt", "first\n\n*** not a header: content\n", line=2),
        DeleteFile("/w/old.txt", line=6),
        UpdateFile(
            "/w/a.py",
            (
                Hunk(
                    (HunkLine(" ", "context"), HunkLine("-", "old"), HunkLine("+", "new")),
                    anchors=("def f():",),
                    end_of_file=True,
                    line=9,
                ),
            ),
            move_to="/w/b.py",
            line=7,
        ),
    ]


def test_parse_first_hunk_without_header_nested_anchors_and_empty_context_lines():
    (change,) = parse_patch(
        patch(
            "*** Update File: /f",
            "-a",
            "+b",
            "@@ class B:",
            "@@     def m(self):",
            " x",
            "",
            "-y",
            "@@",
            "+z",
        )
    )
    assert isinstance(change, UpdateFile)
    first, second, third = change.hunks
    assert (first.anchors, first.line, first.old_lines) == ((), 3, ["a"])
    assert first.lines == (HunkLine("-", "a"), HunkLine("+", "b"))
    assert second.anchors == ("class B:", "def m(self):")
    assert second.lines == (HunkLine(" ", "x"), HunkLine(" ", ""), HunkLine("-", "y"))
    assert (third.anchors, third.old_lines, third.lines) == ((), [], (HunkLine("+", "z"),))


def test_parse_is_lenient_about_crlf_surrounding_blanks_and_a_heredoc():
    text = patch("*** Add File: /a", "+x").replace("\n", "\r\n")
    assert parse_patch(text) == [AddFile("/a", "x\n", line=2)]
    assert parse_patch("\n\n  " + patch("*** Delete File: /a") + "\n \n") == [DeleteFile("/a", line=4)]
    wrapped = "<<'EOF'\n" + patch("*** Delete File: /a") + "EOF\n"
    assert parse_patch(wrapped) == [DeleteFile("/a", line=3)]
    # An Add File with no lines is an empty file; trailing blank lines of a section are ignored.
    assert parse_patch(patch("*** Add File: /e", "", "*** Add File: /f", "+1", "")) == [
        AddFile("/e", "", line=2),
        AddFile("/f", "1\n", line=4),
    ]


def test_a_context_line_may_look_like_a_header():
    hunks = hunks_of(patch("*** Update File: /f", " *** End Patch", "-x"))
    assert hunks[0].old_lines == ["*** End Patch", "x"]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", 1, "the patch is empty"),
        ("   \n\n", 1, "the patch is empty"),
        ("\n*** Add File: /a\n+x\n*** End Patch\n", 2, "must start with '*** Begin Patch'"),
        ("*** Begin Patch\n*** Add File: /a\n+x\n", 3, "must end with '*** End Patch', found '+x'"),
        ("*** Begin Patch\n", 1, "must end with '*** End Patch'"),
        ("*** Begin Patch\n*** End Patch\n", 2, "the patch changes no files"),
        (patch("*** Rename File: /a"), 2, "unknown header '*** Rename File: /a'"),
        (patch("*** Add File: /a", "+x", "y"), 4, "every line of an added file must start with '+'"),
        (patch("*** Add File: /a", "+x", "", "+z"), 4, "found an empty line (write '+' alone for one)"),
        (patch("*** Add File:"), 2, "'*** Add File:' needs a path"),
        (patch("*** Update File: /a"), 2, "'*** Update File: /a' has no hunks"),
        (patch("*** Update File: /a", "", "*** Delete File: /b"), 2, "has no hunks"),
        (patch("*** Move to: /b"), 2, "'*** Move to:' must come directly after an '*** Update File: <path>'"),
        (patch("*** Delete File: /a", "*** Move to: /b"), 3, "must come directly after"),
        (patch("*** Update File: /a", "-x", "*** Move to: /b"), 4, "must come directly after"),
        (patch("*** Update File: /a", "@@ def f():"), 3, "empty hunk in *** Update File: /a"),
        (patch("*** Update File: /a", "-x", "@@", "*** End Patch"), 4, "empty hunk"),
        (patch("*** Update File: /a", "@@", " same"), 3, "changes nothing: it has no '+' or '-' lines"),
        (patch("*** Update File: /a", "@@", "-x", "oops"), 5, "unexpected line in a hunk of *** Update File: /a"),
        (patch("*** End of File"), 2, "'*** End of File' must close a hunk"),
        (patch("*** Update File: /a", "@@", "*** End of File"), 4, "must follow the lines of a hunk"),
        (patch("*** Update File: /a", "-x", "*** End of File", "+y"), 5, "must start with an '@@' line"),
        (patch("*** Delete File: /a") + "*** Delete File: /b\n*** End Patch\n", 3, "must be the last line"),
        (patch("*** Delete File: /a", "-x"), 3, "expected a file header"),
        (patch("*** Begin Patch"), 2, "a second '*** Begin Patch'"),
    ],
)
def test_malformed_patches_name_the_line(text, line, message):
    with pytest.raises(PatchParseError) as raised:
        parse_patch(text)
    assert raised.value.line == line, raised.value
    assert message in str(raised.value)
    assert str(raised.value).startswith(f"line {line}: ")


# --- applier -----------------------------------------------------------------------------------

PROGRAM = """\
import os


def alpha():
    value = 1
    return value


def beta():
    value = 1
    return value


def gamma():
    value = 1
    return value
"""


def test_many_hunks_in_one_file():
    result = update(
        PROGRAM,
        "@@",
        "-import os",
        "+import sys",
        "@@",
        " def beta():",
        "-    value = 1",
        "+    value = 2",
        "@@",
        " def gamma():",
        "-    value = 1",
        "+    value = 3",
        "+    value += 1",
    )
    assert result == PROGRAM.replace("import os", "import sys").replace(
        "def beta():\n    value = 1", "def beta():\n    value = 2"
    ).replace("def gamma():\n    value = 1", "def gamma():\n    value = 3\n    value += 1")


def test_ambiguous_context_is_resolved_by_hunk_order():
    result = update(PROGRAM, "@@", "-    value = 1", "+    value = 'a'", "@@", "-    value = 1", "+    value = 'b'")
    functions = result.split("\n\n\n")
    assert "value = 'a'" in functions[1]
    assert "value = 'b'" in functions[2]
    assert "value = 1" in functions[3]


def test_ambiguous_context_is_resolved_by_an_anchor():
    result = update(PROGRAM, "@@ def gamma():", "-    value = 1", "+    value = 'g'")
    assert result.count("value = 1") == 2
    assert result.endswith("def gamma():\n    value = 'g'\n    return value\n")


def test_an_anchor_repeated_as_the_first_context_line():
    result = update(PROGRAM, "@@ def beta():", " def beta():", "-    value = 1", "+    value = 'b'")
    assert "def beta():\n    value = 'b'\n" in result
    assert result.count("value = 1") == 2


def test_nested_anchors_are_searched_in_order():
    original = "class A:\n    def m(self):\n        return 0\n\nclass B:\n    def m(self):\n        return 0\n"
    result = update(original, "@@ class B:", "@@     def m(self):", "-        return 0", "+        return 1")
    assert result == original[: original.rindex("0")] + "1\n"


def test_a_missing_anchor_or_context_fails_with_a_clear_message():
    with pytest.raises(PatchApplyError) as raised:
        update(PROGRAM, "@@ def delta():", "-    value = 1", "+    value = 2", path="/src/p.py")
    assert str(raised.value) == 'could not find context "@@ def delta():" in /src/p.py (hunk 1 at patch line 3)'
    with pytest.raises(PatchApplyError) as raised:
        update(PROGRAM, "@@", " def beta():", "-    value = 7", "+    value = 2", path="/src/p.py")
    assert str(raised.value) == (
        'could not find context "def beta():\\n    value = 7" in /src/p.py (hunk 1 at patch line 3)'
    )


def test_hunks_out_of_file_order_fail_with_a_hint():
    with pytest.raises(PatchApplyError, match="only before the previous hunk"):
        update(PROGRAM, "@@ def gamma():", "-    value = 1", "+    value = 3", "@@", "-import os", "+import sys")


def test_whitespace_tolerance_ladder():
    # Trailing whitespace in the file (or in the patch) is ignored on the second rung.
    assert update("a  \nb\t\nc\n", "@@", " a", "-b", "+B") == "a  \nB\nc\n"
    assert update("a\nb\n", "@@", " a   ", "-b", "+B") == "a\nB\n"
    # Indentation differences are ignored on the third rung; context lines keep the file's text.
    assert update("    a\n    b\n", "@@", " a", "-b", "+    B") == "    a\n    B\n"
    # An exact match anywhere wins over a tolerant match earlier in the file.
    assert update("  x\ny\nx\ny\n", "@@", " x", "-y", "+Y") == "  x\ny\nx\nY\n"
    # Anchors use the same ladder.
    assert update("class K:\n    def f():\n        pass\n", "@@ def f():", "-        pass", "+        return") == (
        "class K:\n    def f():\n        return\n"
    )


def test_end_of_file_anchors_at_the_end():
    original = "x = 1\ny = 2\nx = 1\ny = 2\n"
    assert update(original, "@@", " x = 1", "-y = 2", "+y = 3", "*** End of File") == "x = 1\ny = 2\nx = 1\ny = 3\n"
    assert update(original, "@@", " x = 1", "-y = 2", "+y = 3") == "x = 1\ny = 3\nx = 1\ny = 2\n"
    with pytest.raises(PatchApplyError, match=r"the lines are there, but not at the end of the file"):
        update("a\nb\nc\n", "@@", "-a", "+A", "*** End of File")
    # A hunk of added lines only, marked End of File, appends.
    assert update("a\n", "@@", "+b", "*** End of File") == "a\nb\n"


def test_added_lines_only_go_after_the_anchor_else_at_the_end():
    assert update("a\nb\nc\n", "@@ a", "+after a") == "a\nafter a\nb\nc\n"
    assert update("a\nb\nc\n", "@@", "+at the end") == "a\nb\nc\nat the end\n"
    assert update("", "@@", "+first") == "first\n"


def test_crlf_files_stay_crlf():
    original = "one\r\ntwo\r\nthree\r\n"
    assert update(original, "@@", " one", "-two", "+TWO", "+2.5") == "one\r\nTWO\r\n2.5\r\nthree\r\n"
    # Mixed endings: kept lines keep theirs, added lines take the majority's.
    mixed = "a\r\nb\nc\r\nd\r\n"
    assert update(mixed, "@@", " a", " b", "+b2", " c") == "a\r\nb\nb2\r\nc\r\nd\r\n"
    assert update("a\nb\r\nc\n", "@@", " a", "+a2") == "a\na2\nb\r\nc\n"


def test_the_trailing_newline_state_is_kept():
    assert update("a\nb", "@@", " a", "-b", "+B") == "a\nB"
    assert update("a\nb", "@@", "-b") == "a"
    assert update("a\nb", "@@", " b", "+c", "*** End of File") == "a\nb\nc"
    assert update("a\r\nb", "@@", " a", "+x") == "a\r\nx\r\nb"
    assert update("a\nb\n", "@@", "-a") == "b\n"
    assert update("a\n", "@@", "-a") == ""


def test_a_bom_and_non_utf8_bytes_survive():
    assert update("\ufeffa\nb\n", "@@", "-a", "+A") == "\ufeffA\nb\n"
    original = b"caf\xe9\nkeep\n".decode("utf-8", errors="surrogateescape")
    result = update(original, "@@", " keep", "+more")
    assert result.encode("utf-8", errors="surrogateescape") == b"caf\xe9\nkeep\nmore\n"


def test_a_trailing_blank_context_line_that_is_not_in_the_file_is_dropped():
    assert update("a\nb\n", "@@", " a", "-b", "+B", "") == "a\nB\n"


def test_hunks_built_by_hand():
    hunk = Hunk((HunkLine(" ", "a"), HunkLine("-", "b"), HunkLine("+", "c")))
    assert apply_hunks("a\nb\n", [hunk]) == "a\nc\n"
    with pytest.raises(PatchApplyError, match="in the file"):
        apply_hunks("x\n", [hunk])


def test_resolve_path():
    assert resolve_path("/a/./b/../c") == "/a/c"
    assert resolve_path("//a//b/") == "/a/b"
    assert resolve_path("src/x.py", "/work") == "/work/src/x.py"
    assert resolve_path("/abs", "/work") == "/abs"
    with pytest.raises(ValueError, match=r"relative path 'src/x\.py'"):
        resolve_path("src/x.py")


# --- the tool, against an in-memory executor ---------------------------------------------------


class FakeExecutor:
    """``fs/*`` as exec-server answers them; ``fail[(method, path)] = (code, message)`` injects an
    error answer."""

    def __init__(self, files: dict[str, bytes] | None = None, dirs: set[str] | None = None) -> None:
        self.files = dict(files or {})
        self.dirs = {"/"} | set(dirs or ())
        for path in self.files:
            self._add_parents(path)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: dict[tuple[str, str], tuple[int, str]] = {}

    def _add_parents(self, path: str) -> None:
        parent = posixpath.dirname(path)
        while parent not in self.dirs:
            self.dirs.add(parent)
            parent = posixpath.dirname(parent)

    def writes(self) -> list[tuple[str, dict[str, Any]]]:
        return [call for call in self.calls if call[0] not in ("fs/readFile", "fs/getMetadata")]

    @staticmethod
    def _path(uri: str) -> str:
        assert uri.startswith("file:///"), uri
        return unquote(urlsplit(uri).path)

    async def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0, **kw: Any) -> Any:  # noqa: ASYNC109
        assert params is not None
        self.calls.append((method, params))
        key = params.get("path") or params.get("destinationPath") or ""
        path = self._path(key)
        if (method, path) in self.fail:
            code, message = self.fail[(method, path)]
            raise BridgeRPCError(method, code, message)
        missing = BridgeRPCError(method, -32004, "No such file or directory (os error 2)")
        if method == "fs/readFile":
            if path in self.dirs:
                raise BridgeRPCError(method, -32600, f"path `{path}` is not a file")
            if path not in self.files:
                raise missing
            return {"dataBase64": base64.b64encode(self.files[path]).decode()}
        if method == "fs/getMetadata":
            if path in self.dirs:
                return {"isDirectory": True, "isFile": False, "isSymlink": False}
            if path in self.files:
                return {"isDirectory": False, "isFile": True, "isSymlink": False, "size": len(self.files[path])}
            raise missing
        if method == "fs/writeFile":
            if posixpath.dirname(path) not in self.dirs:
                raise missing
            self.files[path] = base64.b64decode(params["dataBase64"])
            return {}
        if method == "fs/createDirectory":
            assert params["recursive"] is True
            self.dirs.add(path)
            self._add_parents(path)
            return {}
        if method == "fs/remove":
            if path not in self.files:
                raise missing
            del self.files[path]
            return {}
        if method == "fs/copy":
            source = self._path(params["sourcePath"])
            assert params["recursive"] is False
            if source not in self.files or posixpath.dirname(path) not in self.dirs:
                raise missing
            self.files[path] = self.files[source]
            return {}
        raise BridgeRPCError(method, -32601, "method not found")


async def test_add_creates_parent_directories_then_writes():
    executor = FakeExecutor()
    result = await run_patch(executor, patch("*** Add File: /w/deep/new dir/f#1.txt", "+hello", "+world"))
    assert (result.text, result.is_error) == ("/w/deep/new dir/f#1.txt: ok", False)
    assert executor.files["/w/deep/new dir/f#1.txt"] == b"hello\nworld\n"
    assert executor.writes() == [
        ("fs/createDirectory", {"path": "file:///w/deep/new%20dir", "recursive": True}),
        (
            "fs/writeFile",
            {"path": "file:///w/deep/new%20dir/f%231.txt", "dataBase64": base64.b64encode(b"hello\nworld\n").decode()},
        ),
    ]
    assert result.structured == {"applied": True, "files": [{"path": "/w/deep/new dir/f#1.txt", "ok": True}]}


async def test_update_delete_and_move_in_one_patch():
    executor = FakeExecutor({"/w/a.py": b"x = 1\ny = 2\n", "/w/gone.txt": b"bye\n", "/w/old.py": b"k = 1\n"})
    result = await run_patch(
        executor,
        patch(
            "*** Update File: /w/a.py",
            "@@",
            " x = 1",
            "-y = 2",
            "+y = 3",
            "*** Delete File: /w/gone.txt",
            "*** Update File: /w/old.py",
            "*** Move to: /w/pkg/new.py",
            "@@",
            "-k = 1",
            "+k = 2",
        ),
    )
    assert result.text == "/w/a.py: ok\n/w/gone.txt: ok\n/w/old.py -> /w/pkg/new.py: ok"
    assert not result.is_error
    assert executor.files == {"/w/a.py": b"x = 1\ny = 3\n", "/w/pkg/new.py": b"k = 2\n"}
    assert [method for method, _ in executor.writes()] == [
        "fs/writeFile",
        "fs/remove",
        "fs/createDirectory",
        "fs/copy",
        "fs/writeFile",
        "fs/remove",
    ]


async def test_a_move_onto_itself_is_a_plain_update():
    executor = FakeExecutor({"/w/a": b"1\n"})
    result = await run_patch(executor, patch("*** Update File: /w/a", "*** Move to: /w/./a", "-1", "+2"))
    assert not result.is_error
    assert executor.files == {"/w/a": b"2\n"}
    assert [method for method, _ in executor.writes()] == ["fs/writeFile"]


async def test_a_patch_that_fails_on_the_second_file_changes_nothing():
    files = {"/w/a.txt": b"a\n", "/w/b.txt": b"b\n", "/w/c.txt": b"c\n"}
    executor = FakeExecutor(files)
    result = await run_patch(
        executor,
        patch(
            "*** Update File: /w/a.txt",
            "-a",
            "+A",
            "*** Update File: /w/b.txt",
            "-not there",
            "+B",
            "*** Delete File: /w/c.txt",
            "*** Add File: /w/new/d.txt",
            "+d",
        ),
    )
    assert result.is_error
    assert result.text.splitlines() == [
        "/w/a.txt: error: not applied (another file of the patch failed; nothing was written)",
        '/w/b.txt: error: could not find context "not there" in /w/b.txt (hunk 1 at patch line 6)',
        "/w/c.txt: error: not applied (another file of the patch failed; nothing was written)",
        "/w/new/d.txt: error: not applied (another file of the patch failed; nothing was written)",
    ]
    assert executor.writes() == []
    assert executor.files == files
    assert result.structured is not None
    assert result.structured["applied"] is False


async def test_every_file_that_cannot_apply_is_reported_at_once():
    executor = FakeExecutor({"/w/a": b"a\n"}, dirs={"/w/dir"})
    result = await run_patch(
        executor,
        patch(
            "*** Update File: /w/missing",
            "-x",
            "*** Delete File: /w/also-missing",
            "*** Delete File: /w/dir",
            "*** Add File: /w/dir",
            "+x",
            "*** Update File: /w/dir",
            "-x",
            "*** Update File: relative.txt",
            "-x",
            "*** Update File: /w/a",
            "*** Move to: /w/dir",
            "-a",
        ),
    )
    assert result.text.splitlines() == [
        "/w/missing: error: no such file: /w/missing (Update File changes an existing file)",
        "/w/also-missing: error: no such file: /w/also-missing",
        "/w/dir: error: /w/dir is a directory (Delete File removes files only)",
        "/w/dir: error: /w/dir is already changed by '/w/dir' in this patch",
        "/w/dir: error: /w/dir is already changed by '/w/dir' in this patch",
        "relative.txt: error: relative path 'relative.txt': use an absolute path "
        "(or pass 'cwd' to resolve relative paths against)",
        "/w/a -> /w/dir: error: /w/dir is already changed by '/w/dir' in this patch",
    ]
    assert executor.writes() == []


async def test_executor_errors_are_reported_per_file():
    executor = FakeExecutor({"/w/a": b"a\n"}, dirs={"/w/d"})
    executor.fail[("fs/getMetadata", "/w/new")] = (-32600, "permission denied")
    result = await run_patch(executor, patch("*** Update File: /w/d", "-x", "*** Add File: /w/new", "+1"))
    assert result.text.splitlines() == [
        "/w/d: error: path `/w/d` is not a file (code -32600)",
        "/w/new: error: permission denied (code -32600)",
    ]
    assert executor.writes() == []


async def test_a_write_failure_stops_at_that_file_and_says_what_was_written():
    executor = FakeExecutor({"/w/a": b"a\n", "/w/b": b"b\n", "/w/c": b"c\n"})
    executor.fail[("fs/writeFile", "/w/b")] = (-32603, "No space left on device (os error 28)")
    result = await run_patch(
        executor,
        patch("*** Update File: /w/a", "-a", "+A", "*** Update File: /w/b", "-b", "+B", "*** Delete File: /w/c"),
    )
    assert result.is_error
    assert result.text.splitlines() == [
        "/w/a: ok",
        "/w/b: error: fs/writeFile failed: No space left on device (os error 28) (code -32603)",
        "/w/c: error: not applied (writing an earlier file of the patch failed)",
    ]
    assert executor.files == {"/w/a": b"A\n", "/w/b": b"b\n", "/w/c": b"c\n"}


async def test_content_too_large_for_one_write_is_refused_before_writing(monkeypatch):
    monkeypatch.setattr(patch_module, "MAX_WRITE_BASE64", 16)
    executor = FakeExecutor({"/w/a": b"a\n"})
    result = await run_patch(
        executor, patch("*** Update File: /w/a", "-a", "+A", "*** Add File: /w/big", "+0123456789abcdef")
    )
    assert result.text.splitlines() == [
        "/w/a: error: not applied (another file of the patch failed; nothing was written)",
        "/w/big: error: the new content of /w/big is 17 bytes: too large for one fs/writeFile (at most 12 bytes)",
    ]
    assert executor.writes() == []


async def test_relative_paths_resolve_against_cwd():
    executor = FakeExecutor({"/work/src/a.py": b"1\n"})
    result = await run_patch(executor, patch("*** Update File: src/a.py", "-1", "+2"), cwd="/work")
    assert result.text == "src/a.py: ok"
    assert executor.files["/work/src/a.py"] == b"2\n"
    refused = await run_patch(executor, patch("*** Delete File: a"), cwd="work")
    assert (refused.text, refused.is_error) == ("invalid arguments: cwd: must be an absolute path, got 'work'", True)


async def test_crlf_and_no_trailing_newline_survive_the_round_trip():
    executor = FakeExecutor({"/w/win.txt": b"one\r\ntwo\r\nthree"})
    result = await run_patch(executor, patch("*** Update File: /w/win.txt", " one", "-two", "+2", "+2.5"))
    assert not result.is_error
    assert executor.files["/w/win.txt"] == b"one\r\n2\r\n2.5\r\nthree"


async def test_a_parse_error_is_a_result_and_touches_nothing():
    executor = FakeExecutor()
    result = await run_patch(executor, "*** Begin Patch\n*** Frobnicate File: /x\n*** End Patch")
    assert result.is_error
    assert result.text.startswith("invalid patch: line 2: unknown header '*** Frobnicate File: /x'")
    assert executor.calls == []


class FakePool:
    def __init__(self, clients: dict[str, FakeExecutor]) -> None:
        self.clients = clients

    async def get(self, exe_id: str) -> Any:
        return self.clients[exe_id]


def tool_context(executor: FakeExecutor) -> ToolContext:
    async def fetch() -> list[dict[str, Any]]:
        return [{"name": "box", "exe_id": "exe_box"}]

    return ToolContext(
        "ws-1", cast(Any, FakePool({"exe_box": executor})), NameResolver(fetch), InMemoryProcessSessions()
    )


async def test_the_tool_entry_point():
    executor = FakeExecutor({"/w/a": b"a\n"})
    ctx = tool_context(executor)
    ok = await apply_patch(
        ctx, {"environment_id": "box", "patch": patch("*** Update File: a", "-a", "+b"), "cwd": "/w"}
    )
    assert (ok.text, ok.is_error) == ("a: ok", False)
    assert executor.files["/w/a"] == b"b\n"
    assert ok.to_mcp()["structuredContent"] == {"applied": True, "files": [{"path": "a", "ok": True}]}

    unknown = await apply_patch(ctx, {"environment_id": "nope", "patch": patch("*** Delete File: /w/a")})
    assert unknown.is_error
    assert "no environment named 'nope'" in unknown.text
    missing = await apply_patch(ctx, {"patch": patch("*** Delete File: /w/a")})
    assert missing.is_error
    assert missing.text.startswith("invalid arguments: environment_id is required")
    no_patch = await apply_patch(ctx, {"environment_id": "box"})
    assert (no_patch.text, no_patch.is_error) == ("invalid arguments: patch is required", True)
    bad = await apply_patch(ctx, {"environment_id": "box", "patch": "*** Begin Patch\n"})
    assert bad.is_error
    assert bad.text.startswith("invalid patch: line 1: the patch must end with '*** End Patch'")
    relative_cwd = await apply_patch(ctx, {"environment_id": "box", "patch": patch("*** Delete File: a"), "cwd": "w"})
    assert relative_cwd.text == "invalid arguments: cwd: must be an absolute path, got 'w'"
    assert executor.files == {"/w/a": b"b\n"}
