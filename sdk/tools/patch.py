"""The ``apply_patch`` tool: Codex's patch grammar, parsed and applied in the gateway, with the files
read and written on the executor through exec-server ``fs/*`` calls (codex-wire §A.6).

Three layers, each usable on its own:

* ``parse_patch(text) -> list[FileChange]``: pure; ``PatchParseError`` names the patch line.
* ``apply_hunks(original, hunks, path) -> str``: pure; ``PatchApplyError`` when a hunk does not fit.
* ``run_patch(client, patch, cwd=None)`` against a resolved executor (the tool, ``apply_patch`` in
  ``sdk.tools.files``, resolves it first): every failure is a result, never an exception.

The grammar::

    *** Begin Patch
    *** Add File: <path>          then only '+' lines: the new file's content
    *** Delete File: <path>
    *** Update File: <path>
    *** Move to: <new path>       optional, only directly after Update File
    @@ <anchor>                   optional text: a line to find first (several @@ lines nest)
     context line
    -removed line
    +added line
    *** End of File               optional: the hunk must match at the end of the file
    *** End Patch

Decisions (where Codex's own behaviour is loose or differs, this module's choice is stated):

* Applying is all or nothing against anything that can be checked first: the whole patch is
  parsed, every Update is read and applied in memory, every Delete/Add/Move target is checked with
  ``fs/getMetadata``, and only then is anything written. An I/O failure *during* the writes cannot
  be undone (there is no rollback); the result then says which files were written.
* Paths: absolute POSIX paths are used as they are (normalised lexically, sent as percent-encoded
  ``file://`` URIs). Relative paths are resolved against the optional ``cwd`` argument (itself
  absolute) and refused when there is none. A path may appear only once in a patch (sources and
  Move destinations together).
* Hunks are located in order: each search starts after the previous hunk's match and after each
  ``@@`` anchor line, trying exact lines, then lines with trailing whitespace ignored, then with
  leading and trailing whitespace ignored. Context lines keep the file's own text (a tolerant
  match never rewrites them); removed lines go, added lines are inserted as written. Two retries
  before giving up: a hunk whose first context line repeats its ``@@`` anchor line is also tried
  from the anchor line itself, and one whose last lines are empty context lines (a blank line left
  before the next header) without them. A hunk with only '+' lines is inserted directly after its
  ``@@`` anchor, or at the end of the file when it has none (Codex: always at the end).
* ``*** End of File``: the hunk must match the last lines of the file.
* Line endings: each kept line keeps its own ending; added lines take the file's dominant one
  (CRLF when most lines end in CRLF). The file keeps its trailing-newline state (an empty file
  gains one), a UTF-8 BOM is kept, and bytes that are not UTF-8 pass through unchanged.
* Add File overwrites an existing file (as in Codex) and creates missing parent directories;
  an empty Add File creates an empty file. Delete File removes files only, never directories.
  An Update File with no hunks, an empty hunk and a hunk without '+'/'-' lines are errors.
* Move: ``fs/copy`` (so the new file keeps the old one's permissions), ``fs/writeFile`` of the new
  content, then ``fs/remove`` of the old path. A Move onto its own path is a plain update.
* A file's new content must fit one WebSocket frame as base64 (~12 MiB); a larger one is refused
  during validation rather than getting the bridge closed with 1009 halfway through the writes.
* The result has one line per file, ``<path>: ok`` or ``<path>: error: <message>`` (a Move is
  labelled ``<path> -> <new path>``), and structuredContent ``{applied, files: [{path, ok, error?}]}``.
  A parse error is a single ``invalid patch: line N: …`` error result.
* A patch wrapped in a shell heredoc (``<<'EOF'`` … ``EOF``) is unwrapped; blank lines around the
  patch and between file sections are ignored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias

from bridge.client import BridgeRPCError
from bridge.protocol import MAX_FRAME_BYTES
from sdk.tools.base import ToolResult, file_uri

JSON = dict[str, Any]


class BridgeCaller(Protocol):
    """The one method this module needs from ``bridge.client.BridgeClient`` (which satisfies this
    structurally); tests pass fakes. ``call`` returns the JSON-RPC ``result`` or raises
    ``BridgeRPCError`` (or another ``BridgeError``)."""

    async def call(
        self,
        method: str,
        params: JSON | None = ...,
        timeout: float = ...,  # noqa: ASYNC109
        *,
        idempotent: bool = ...,
    ) -> Any: ...


TOOL_NAME = "apply_patch"
FS_TIMEOUT = 60.0  # seconds per fs/* call
PLAN_CONCURRENCY = 8  # reads and metadata checks in flight at once
NOT_FOUND = -32004  # exec-server: "No such file or directory"
# fs/writeFile sends the whole file, base64, in one WebSocket frame; a larger frame would get the
# bridge closed with 1009, so bigger contents are refused before anything is written.
MAX_WRITE_BASE64 = MAX_FRAME_BYTES - 64 * 1024

DESCRIPTION = (
    "Edit files on an environment with a patch in the Codex patch format. The patch starts with "
    "'*** Begin Patch' and ends with '*** End Patch'. Between them, one section per file: "
    "'*** Add File: <path>' followed by the new file's lines, each prefixed with '+'; "
    "'*** Delete File: <path>'; or '*** Update File: <path>' (optionally followed directly by "
    "'*** Move to: <new path>') followed by hunks. A hunk is an optional '@@ <line to find first>' "
    "header and lines prefixed with ' ' (unchanged context), '-' (removed) or '+' (added); give about "
    "three context lines around each change, list hunks in file order, and end a hunk that must match "
    "at the end of the file with '*** End of File'. Paths are absolute, or relative to 'cwd' when it "
    "is given. Nothing is written unless every file of the patch applies."
)

INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "environment_id": {"type": "string", "description": "The environment's name (from list_environments)."},
        "patch": {"type": "string", "description": "The patch, '*** Begin Patch' … '*** End Patch'."},
        "cwd": {
            "type": "string",
            "description": "Absolute directory for relative paths in the patch.",
        },
    },
    "required": ["environment_id", "patch"],
    "additionalProperties": False,
}


# --- the patch model ---------------------------------------------------------------------------

BEGIN = "*** Begin Patch"
END = "*** End Patch"
ADD = "*** Add File:"
DELETE = "*** Delete File:"
UPDATE = "*** Update File:"
MOVE = "*** Move to:"
END_OF_FILE = "*** End of File"
FILE_HEADERS = f"'{ADD} <path>', '{DELETE} <path>' or '{UPDATE} <path>'"


class PatchError(Exception):
    """A patch that cannot be parsed or applied; ``str()`` is the message for the model."""


class PatchParseError(PatchError):
    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"line {line}: {message}")


class PatchApplyError(PatchError):
    pass


HunkLineKind: TypeAlias = Literal[" ", "-", "+"]


@dataclass(frozen=True)
class HunkLine:
    kind: HunkLineKind  # ' ' context, '-' removed, '+' added
    text: str


@dataclass(frozen=True)
class Hunk:
    lines: tuple[HunkLine, ...]
    anchors: tuple[str, ...] = ()  # the texts of its '@@ …' headers, searched in order
    end_of_file: bool = False
    line: int = 0  # where it starts in the patch (for messages)

    @property
    def old_lines(self) -> list[str]:
        """What the hunk expects to find: context and removed lines."""
        return [line.text for line in self.lines if line.kind != "+"]

    @property
    def new_lines(self) -> list[str]:
        """What it leaves: context and added lines."""
        return [line.text for line in self.lines if line.kind != "-"]


@dataclass(frozen=True)
class AddFile:
    path: str
    content: str
    line: int = 0


@dataclass(frozen=True)
class DeleteFile:
    path: str
    line: int = 0


@dataclass(frozen=True)
class UpdateFile:
    path: str
    hunks: tuple[Hunk, ...]
    move_to: str | None = None
    line: int = 0


FileChange: TypeAlias = AddFile | DeleteFile | UpdateFile


# --- parsing -----------------------------------------------------------------------------------


def parse_patch(text: str) -> list[FileChange]:
    """Parse a whole patch; ``PatchParseError`` (with the 1-based line number) if it is malformed."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    bounds = _content_bounds(lines, 0, len(lines) - 1)
    if bounds is None:
        raise PatchParseError(1, f"the patch is empty: it must start with {BEGIN!r}")
    first, last = bounds
    opener = lines[first].strip()
    if opener.startswith("<<"):  # apply_patch <<'EOF' … EOF, as in a shell
        delimiter = opener[2:].strip().strip("'\"")
        if delimiter and last > first and lines[last].strip() == delimiter:
            inner = _content_bounds(lines, first + 1, last - 1)
            if inner is None:
                raise PatchParseError(first + 2, f"the patch is empty: it must start with {BEGIN!r}")
            first, last = inner
    if lines[first].strip() != BEGIN:
        raise PatchParseError(first + 1, f"the patch must start with {BEGIN!r}, found {_clip(lines[first])!r}")
    if last == first or lines[last].strip() != END:
        raise PatchParseError(last + 1, f"the patch must end with {END!r}, found {_clip(lines[last])!r}")
    changes = _Parser(lines, first + 1, last).parse()
    if not changes:
        raise PatchParseError(last + 1, f"the patch changes no files: add sections such as {FILE_HEADERS}")
    return changes


def _content_bounds(lines: Sequence[str], start: int, stop: int) -> tuple[int, int] | None:
    """The first and last non-blank line indexes within ``[start, stop]``."""
    while start <= stop and not lines[start].strip():
        start += 1
    while stop >= start and not lines[stop].strip():
        stop -= 1
    return (start, stop) if start <= stop else None


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class _HunkBuilder:
    line: int
    anchors: list[str] = field(default_factory=list)
    lines: list[HunkLine] = field(default_factory=list)

    def build(self, path: str, end_of_file: bool = False) -> Hunk:
        if not self.lines:
            raise PatchParseError(
                self.line, f"empty hunk in {UPDATE} {path}: '@@' must be followed by ' ', '-' or '+' lines"
            )
        if all(line.kind == " " for line in self.lines):
            raise PatchParseError(self.line, f"hunk in {UPDATE} {path} changes nothing: it has no '+' or '-' lines")
        return Hunk(tuple(self.lines), tuple(self.anchors), end_of_file, self.line)


class _Parser:
    """The lines between Begin and End Patch (indexes ``[index, end)``), file section by section."""

    def __init__(self, lines: list[str], index: int, end: int) -> None:
        self.lines = lines
        self.index = index
        self.end = end

    def parse(self) -> list[FileChange]:
        changes: list[FileChange] = []
        while self.index < self.end:
            raw = self.lines[self.index]
            stripped = raw.strip()
            number = self.index + 1
            if not stripped:
                self.index += 1
            elif stripped.startswith(ADD):
                changes.append(self._add(self._path(stripped, ADD)))
            elif stripped.startswith(DELETE):
                changes.append(DeleteFile(self._path(stripped, DELETE), number))
                self.index += 1
            elif stripped.startswith(UPDATE):
                changes.append(self._update(self._path(stripped, UPDATE)))
            elif stripped.startswith(MOVE):
                raise PatchParseError(number, f"'{MOVE}' must come directly after an '{UPDATE} <path>' line")
            elif stripped == END_OF_FILE:
                raise PatchParseError(number, f"'{END_OF_FILE}' must close a hunk of an '{UPDATE}' section")
            elif stripped == END:
                raise PatchParseError(number, f"'{END}' must be the last line of the patch (more text follows it)")
            elif stripped == BEGIN:
                raise PatchParseError(number, f"a second '{BEGIN}' inside the patch")
            elif stripped.startswith("***"):
                raise PatchParseError(number, f"unknown header {_clip(stripped)!r}: expected {FILE_HEADERS}")
            else:
                raise PatchParseError(number, f"expected a file header ({FILE_HEADERS}), found {_clip(raw)!r}")
        return changes

    def _path(self, header: str, prefix: str) -> str:
        path = header[len(prefix) :].strip()
        if not path:
            raise PatchParseError(self.index + 1, f"'{prefix}' needs a path")
        return path

    def _at_section_end(self, raw: str) -> bool:
        return raw.lstrip().startswith("***")

    def _add(self, path: str) -> AddFile:
        header_line = self.index + 1
        self.index += 1
        content: list[str] = []
        while self.index < self.end and not self._at_section_end(self.lines[self.index]):
            raw = self.lines[self.index]
            if raw.startswith("+"):
                content.append(raw[1:])
            elif raw.strip() or not self._only_blank_lines_left_in_section():
                found = "an empty line (write '+' alone for one)" if not raw.strip() else repr(_clip(raw))
                raise PatchParseError(
                    self.index + 1, f"every line of an added file must start with '+' ({ADD} {path}), found {found}"
                )
            self.index += 1
        return AddFile(path, "".join(line + "\n" for line in content), header_line)

    def _only_blank_lines_left_in_section(self) -> bool:
        index = self.index
        while index < self.end and not self._at_section_end(self.lines[index]):
            if self.lines[index].strip():
                return False
            index += 1
        return True

    def _update(self, path: str) -> UpdateFile:
        header_line = self.index + 1
        self.index += 1
        move_to: str | None = None
        if self.index < self.end and self.lines[self.index].strip().startswith(MOVE):
            move_to = self._path(self.lines[self.index].strip(), MOVE)
            self.index += 1
        hunks: list[Hunk] = []
        current: _HunkBuilder | None = None
        while self.index < self.end:
            raw = self.lines[self.index]
            number = self.index + 1
            if raw.startswith("***"):
                stripped = raw.strip()
                if stripped == END_OF_FILE:
                    if current is None or not current.lines:
                        raise PatchParseError(number, f"'{END_OF_FILE}' must follow the lines of a hunk")
                    hunks.append(current.build(path, end_of_file=True))
                    current = None
                elif stripped.startswith(MOVE):
                    raise PatchParseError(number, f"'{MOVE}' must come directly after the '{UPDATE} {path}' line")
                else:
                    break  # the next file section, End Patch, or an unknown header: parse() decides
            elif raw.startswith("@@"):
                if current is not None and current.lines:
                    hunks.append(current.build(path))
                    current = None
                if current is None:
                    current = _HunkBuilder(number)
                anchor = raw[2:].strip()
                if anchor:
                    current.anchors.append(anchor)
            elif not raw.strip():
                if current is not None:  # an empty context line (else a blank line between hunks)
                    current.lines.append(HunkLine(" ", raw[1:] if raw.startswith(" ") else ""))
            elif raw[0] in " -+":
                if current is None:
                    if hunks:
                        raise PatchParseError(number, f"a hunk after '{END_OF_FILE}' must start with an '@@' line")
                    current = _HunkBuilder(number)  # the first hunk may leave out its '@@'
                current.lines.append(HunkLine(_kind(raw[0]), raw[1:]))
            else:
                raise PatchParseError(
                    number,
                    f"unexpected line in a hunk of {UPDATE} {path}: {_clip(raw)!r} "
                    "(hunk lines start with ' ', '-' or '+'; hunks start with '@@')",
                )
            self.index += 1
        if current is not None:
            hunks.append(current.build(path))
        if not hunks:
            raise PatchParseError(header_line, f"'{UPDATE} {path}' has no hunks: an update must change some lines")
        return UpdateFile(path, tuple(hunks), move_to, header_line)


def _kind(prefix: str) -> HunkLineKind:
    if prefix == "-":
        return "-"
    if prefix == "+":
        return "+"
    return " "


# --- applying ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    text: str  # without its line ending
    ending: str  # "\n", "\r\n", or "" for a last line without one


def _split_lines(text: str) -> list[_Line]:
    pieces = text.split("\n")
    last = pieces.pop()  # "" when the text ends with a newline (or is empty)
    lines = [_Line(piece[:-1], "\r\n") if piece.endswith("\r") else _Line(piece, "\n") for piece in pieces]
    if last:
        lines.append(_Line(last, ""))
    return lines


def _exact(text: str) -> str:
    return text


_LADDER = (_exact, str.rstrip, str.strip)  # exact, then trailing whitespace ignored, then both ends


def _seek(lines: Sequence[str], pattern: Sequence[str], start: int, at_end: bool) -> int | None:
    """Index of the first place at or after ``start`` where ``pattern`` matches (only the very end
    when ``at_end``), trying each rung of the tolerance ladder over the whole range before the next."""
    last = len(lines) - len(pattern)
    if last < start:
        return None
    candidates = range(last, last + 1) if at_end else range(start, last + 1)
    for normalise in _LADDER:
        wanted = [normalise(text) for text in pattern]
        for index in candidates:
            if all(normalise(lines[index + offset]) == want for offset, want in enumerate(wanted)):
                return index
    return None


def _quote(lines: Sequence[str], limit: int = 300) -> str:
    return json.dumps(_clip("\n".join(lines), limit), ensure_ascii=False)


def apply_hunks(original: str, hunks: Sequence[Hunk], path: str = "the file") -> str:
    """The file's new text after ``hunks`` (in order); ``PatchApplyError`` names the hunk that does
    not fit. ``path`` is only used in messages."""
    bom = "\ufeff" if original.startswith("\ufeff") else ""
    body = original[len(bom) :]
    lines = _split_lines(body)
    texts = [line.text for line in lines]
    crlf = sum(line.ending == "\r\n" for line in lines)
    default_ending = "\r\n" if crlf * 2 > sum(line.ending != "" for line in lines) else "\n"
    keeps_final_newline = not lines or lines[-1].ending != ""

    edits: list[tuple[int, int, Sequence[HunkLine]]] = []  # (start, old line count, hunk lines)
    cursor = 0
    for number, hunk in enumerate(hunks, 1):
        where = f"hunk {number} at patch line {hunk.line}" if hunk.line else f"hunk {number}"
        for anchor in hunk.anchors:
            found = _seek(texts, [anchor], cursor, at_end=False)
            if found is None:
                raise PatchApplyError(f"could not find context {_quote(['@@ ' + anchor])} in {path} ({where})")
            cursor = found + 1
        old = hunk.old_lines
        if not old:  # only added lines: after the anchor, else at the end
            position = cursor if hunk.anchors and not hunk.end_of_file else len(texts)
            edits.append((position, 0, hunk.lines))
            continue
        # Fallbacks, in order: the hunk may repeat its anchor line as its first context line, and
        # may end with blank context lines that are not in the file.
        origins = [cursor, cursor - 1] if hunk.anchors else [cursor]
        variants: list[tuple[Sequence[HunkLine], list[str]]] = [(hunk.lines, old)]
        trimmed = _without_trailing_blank_context(hunk.lines)
        if len(trimmed) < len(hunk.lines) and any(line.kind != "+" for line in trimmed):
            variants.append((trimmed, [line.text for line in trimmed if line.kind != "+"]))
        start: int | None = None
        body_lines: Sequence[HunkLine] = hunk.lines
        for candidate_lines, candidate_old in variants:
            for origin in origins:
                start = _seek(texts, candidate_old, origin, hunk.end_of_file)
                if start is not None:
                    break
            if start is not None:
                body_lines, old = candidate_lines, candidate_old
                break
        if start is None:
            raise PatchApplyError(
                f"could not find context {_quote(old)} in {path} ({where}){_hint(texts, old, cursor, hunk)}"
            )
        edits.append((start, len(old), body_lines))
        cursor = start + len(old)

    result: list[_Line] = []
    position = 0
    for start, count, hunk_lines in sorted(edits, key=lambda edit: edit[0]):
        result.extend(lines[position:start])
        position = start
        for hunk_line in hunk_lines:
            if hunk_line.kind == "+":
                result.append(_Line(hunk_line.text, default_ending))
            elif hunk_line.kind == " ":
                result.append(lines[position])  # the file's own text, not the patch's
                position += 1
            else:
                position += 1
        position = start + count
    result.extend(lines[position:])

    out: list[str] = []
    for index, line in enumerate(result):
        ending = line.ending or default_ending
        if index == len(result) - 1 and not keeps_final_newline:
            ending = ""
        out.append(line.text + ending)
    return bom + "".join(out)


def _without_trailing_blank_context(lines: Sequence[HunkLine]) -> Sequence[HunkLine]:
    end = len(lines)
    while end and lines[end - 1].kind == " " and not lines[end - 1].text.strip():
        end -= 1
    return lines[:end]


def _hint(texts: Sequence[str], old: Sequence[str], cursor: int, hunk: Hunk) -> str:
    if hunk.end_of_file and _seek(texts, old, cursor, at_end=False) is not None:
        return f": the lines are there, but not at the end of the file ('{END_OF_FILE}')"
    if cursor and _seek(texts, old, 0, at_end=False) is not None:
        return ": the lines occur only before the previous hunk or '@@' anchor (hunks must be in file order)"
    return ""


# --- paths -------------------------------------------------------------------------------------


def resolve_path(path: str, cwd: str | None = None) -> str:
    """An absolute, lexically normalised POSIX path; ``ValueError`` for a relative one without ``cwd``."""
    if not posixpath.isabs(path):
        if cwd is None:
            raise ValueError(
                f"relative path {path!r}: use an absolute path (or pass 'cwd' to resolve relative paths against)"
            )
        path = posixpath.join(cwd, path)
    normalised = posixpath.normpath(path)
    return "/" + normalised.lstrip("/")


async def run_patch(client: BridgeCaller, patch: str, *, cwd: str | None = None) -> ToolResult:
    """Parse and apply ``patch`` on the executor behind ``client``: the tool without argument checks
    and environment resolution."""
    try:
        changes = parse_patch(patch)
    except PatchParseError as error:
        return ToolResult.error(f"invalid patch: {error}")
    return await apply_changes(client, changes, cwd=cwd)


async def apply_changes(client: BridgeCaller, changes: Sequence[FileChange], *, cwd: str | None = None) -> ToolResult:
    """Validate every change (reads, in-memory application, metadata checks) and, only if all of them
    validate, write them in patch order. Never raises for a failure of the patch or the executor."""
    if cwd is not None and not posixpath.isabs(cwd):
        return ToolResult.error(f"invalid arguments: cwd must be an absolute path, not {cwd!r}")

    plans: list[_Plan | None] = [None] * len(changes)
    work: list[tuple[int, str, FileChange, str, str | None]] = []
    seen: dict[str, str] = {}
    for index, change in enumerate(changes):
        move_to = change.move_to if isinstance(change, UpdateFile) else None
        label = f"{change.path} -> {move_to}" if move_to is not None else change.path
        try:
            source = resolve_path(change.path, cwd)
            destination = resolve_path(move_to, cwd) if move_to is not None else None
        except ValueError as problem:
            plans[index] = _Plan(label, error=str(problem))
            continue
        if destination == source:
            destination = None  # a Move onto itself is a plain update
        touched = [source] if destination is None else [source, destination]
        clash = next((path for path in touched if path in seen), None)
        if clash is not None:
            plans[index] = _Plan(label, error=f"{clash} is already changed by {seen[clash]!r} in this patch")
            continue
        seen.update(dict.fromkeys(touched, label))
        work.append((index, label, change, source, destination))

    limit = asyncio.Semaphore(PLAN_CONCURRENCY)

    async def plan(index: int, label: str, change: FileChange, source: str, destination: str | None) -> None:
        async with limit:
            plans[index] = await _plan(client, label, change, source, destination)

    await asyncio.gather(*(plan(*item) for item in work))
    ready = [item for item in plans if item is not None]

    if any(item.error is not None for item in ready):
        return _result([(item.label, item.error or NOT_APPLIED_INVALID) for item in ready], applied=False)

    outcomes: list[tuple[str, str | None]] = []
    failed = False
    for item in ready:
        outcome = NOT_APPLIED_AFTER_FAILURE if failed else await _execute(client, item.ops)
        failed = outcome is not None
        outcomes.append((item.label, outcome))
    return _result(outcomes, applied=not failed)


NOT_APPLIED_INVALID = "not applied (another file of the patch failed; nothing was written)"
NOT_APPLIED_AFTER_FAILURE = "not applied (writing an earlier file of the patch failed)"


def _result(outcomes: Sequence[tuple[str, str | None]], *, applied: bool) -> ToolResult:
    """One line per file, ``<path>: ok`` or ``<path>: error: <message>``; structuredContent
    ``{applied, files: [{path, ok, error?}]}``."""
    lines = [f"{label}: ok" if problem is None else f"{label}: error: {problem}" for label, problem in outcomes]
    files = [
        {"path": label, "ok": problem is None, **({"error": problem} if problem is not None else {})}
        for label, problem in outcomes
    ]
    is_error = any(problem is not None for _, problem in outcomes)
    return ToolResult("\n".join(lines), is_error, {"applied": applied, "files": files})


@dataclass
class _Op:
    method: str
    params: JSON
    idempotent: bool = True  # safe to repeat if the executor's connection dropped mid-call


@dataclass
class _Plan:
    """One file of the patch: its label in the result and the calls that apply it (or why not)."""

    label: str
    ops: list[_Op] = field(default_factory=list)
    error: str | None = None


async def _execute(client: BridgeCaller, ops: Sequence[_Op]) -> str | None:
    for op in ops:
        try:
            await client.call(op.method, op.params, FS_TIMEOUT, idempotent=op.idempotent)
        except Exception as problem:
            return f"{op.method} failed: {_describe(problem)}"
    return None


async def _plan(client: BridgeCaller, label: str, change: FileChange, source: str, destination: str | None) -> _Plan:
    """Read, apply and check one file; ``destination`` is set for a Move to another path."""
    try:
        if isinstance(change, AddFile):
            await _refuse_directory(client, source)
            ops = [*_mkdir_parent(source), _write(source, change.content.encode("utf-8"))]
        elif isinstance(change, DeleteFile):
            metadata = await _metadata(client, source)
            if metadata is None:
                raise PatchError(f"no such file: {source}")
            if metadata.get("isDirectory"):
                raise PatchError(f"{source} is a directory (Delete File removes files only)")
            ops = [_remove(source)]
        else:
            original = await _read(client, source)
            updated = apply_hunks(original, change.hunks, change.path)
            data = updated.encode("utf-8", errors="surrogateescape")
            if destination is None:
                ops = [_write(source, data)]
            else:
                await _refuse_directory(client, destination)
                copy = {"sourcePath": file_uri(source), "destinationPath": file_uri(destination), "recursive": False}
                ops = [*_mkdir_parent(destination), _Op("fs/copy", copy), _write(destination, data), _remove(source)]
    except PatchError as problem:
        return _Plan(label, error=str(problem))
    except UnicodeEncodeError:
        return _Plan(label, error="the patch contains text that is not valid Unicode (a lone surrogate)")
    except Exception as problem:
        return _Plan(label, error=_describe(problem))
    return _Plan(label, ops)


def _write(path: str, data: bytes) -> _Op:
    encoded = base64.b64encode(data).decode("ascii")
    if len(encoded) > MAX_WRITE_BASE64:
        raise PatchError(
            f"the new content of {path} is {len(data)} bytes: too large for one fs/writeFile "
            f"(at most {MAX_WRITE_BASE64 * 3 // 4} bytes)"
        )
    return _Op("fs/writeFile", {"path": file_uri(path), "dataBase64": encoded})


def _remove(path: str) -> _Op:
    # Not idempotent: a repeat after a lost answer would fail on the file the first one removed.
    return _Op("fs/remove", {"path": file_uri(path), "recursive": False, "force": False}, idempotent=False)


def _mkdir_parent(path: str) -> list[_Op]:
    parent = posixpath.dirname(path)
    if parent in ("", "/"):
        return []
    return [_Op("fs/createDirectory", {"path": file_uri(parent), "recursive": True})]


async def _metadata(client: BridgeCaller, path: str) -> JSON | None:
    """``fs/getMetadata``, or None when nothing is at ``path``."""
    try:
        result = await client.call("fs/getMetadata", {"path": file_uri(path)}, FS_TIMEOUT, idempotent=True)
    except BridgeRPCError as problem:
        if problem.code == NOT_FOUND:
            return None
        raise
    return result if isinstance(result, dict) else {}


async def _refuse_directory(client: BridgeCaller, path: str) -> None:
    metadata = await _metadata(client, path)
    if metadata is not None and metadata.get("isDirectory"):
        raise PatchError(f"{path} is a directory")


async def _read(client: BridgeCaller, path: str) -> str:
    try:
        result = await client.call("fs/readFile", {"path": file_uri(path)}, FS_TIMEOUT, idempotent=True)
    except BridgeRPCError as problem:
        if problem.code == NOT_FOUND:
            raise PatchError(f"no such file: {path} (Update File changes an existing file)") from problem
        raise
    encoded = result.get("dataBase64") if isinstance(result, dict) else None
    if not isinstance(encoded, str):
        raise PatchError(f"fs/readFile of {path} returned no dataBase64")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as problem:
        raise PatchError(f"fs/readFile of {path} returned invalid base64") from problem
    return data.decode("utf-8", errors="surrogateescape")


def _describe(error: BaseException) -> str:
    """A one-line message for the model: the executor's own message for a JSON-RPC error."""
    if isinstance(error, BridgeRPCError):
        return f"{error.message} (code {error.code})"
    return str(error) or type(error).__name__
