"""Codex's patch grammar as text: ``parse_patch`` (the patch into ``FileChange`` objects) and
``sdk.tools.patch_hunks.apply_hunks`` (an Update's hunks onto a file's text). Pure: no I/O, so the ``apply_patch`` tool
(``sdk.tools.patch``) checks a whole patch in memory before it writes anything on the executor.

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

* A patch wrapped in a shell heredoc (``<<'EOF'`` … ``EOF``) is unwrapped; blank lines around the
  patch and between file sections are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias, cast

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
        raise PatchParseError(first + 1, f"the patch must start with {BEGIN!r}, found {clip(lines[first])!r}")
    if last == first or lines[last].strip() != END:
        raise PatchParseError(last + 1, f"the patch must end with {END!r}, found {clip(lines[last])!r}")
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


def clip(text: str, limit: int = 80) -> str:
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
                raise PatchParseError(number, f"unknown header {clip(stripped)!r}: expected {FILE_HEADERS}")
            else:
                raise PatchParseError(number, f"expected a file header ({FILE_HEADERS}), found {clip(raw)!r}")
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
                found = "an empty line (write '+' alone for one)" if not raw.strip() else repr(clip(raw))
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
                current.lines.append(HunkLine(cast(HunkLineKind, raw[0]), raw[1:]))
            else:
                raise PatchParseError(
                    number,
                    f"unexpected line in a hunk of {UPDATE} {path}: {clip(raw)!r} "
                    "(hunk lines start with ' ', '-' or '+'; hunks start with '@@')",
                )
            self.index += 1
        if current is not None:
            hunks.append(current.build(path))
        if not hunks:
            raise PatchParseError(header_line, f"'{UPDATE} {path}' has no hunks: an update must change some lines")
        return UpdateFile(path, tuple(hunks), move_to, header_line)
