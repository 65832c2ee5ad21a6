"""Fitting an Update's hunks onto a file's text (``apply_hunks``; the hunks come from
``sdk.tools.patch_text.parse_patch``). Pure.

Decisions (where Codex's own behaviour is loose or differs, this module's choice is stated):

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
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from sdk.tools.patch_text import END_OF_FILE, Hunk, HunkLine, PatchApplyError, clip


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
    return json.dumps(clip("\n".join(lines), limit), ensure_ascii=False)


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
