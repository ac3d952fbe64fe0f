"""Best-effort line numbers for keys of a TOML file.

tomllib reports positions only for syntax errors, so for a semantic problem we scan the
text: every ``[table]`` / ``[[array]]`` header and every ``key = ...`` line is indexed under
its full dotted path (array tables get ``[i]`` suffixes, counted in file order).  A lookup
answers only when exactly one line has that path; a path no line defines itself (a table
made implicitly by a dotted key such as ``memroy.max = 1``, or by a sub-table header) is
the first line below it; else the nearest parent key's line.  Anything clever (keys inside
multi-line inline tables, odd quoting) just yields ``None``.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Sequence

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_PART = rf"(?:{_BARE}|{_QUOTED})"
_KEY = rf"{_PART}(?:\s*\.\s*{_PART})*"
_HEADER_RE = re.compile(rf"\s*(\[\[?)\s*({_KEY})\s*\]\]?\s*(?:#.*)?\Z")
_KEYLINE_RE = re.compile(rf"\s*({_KEY})\s*=")
_PART_RE = re.compile(_PART)


def _parts(key: str) -> list[str]:
    out = []
    for m in _PART_RE.finditer(key):
        part = m.group(0)
        if part[0] in "\"'":
            part = part[1:-1]
            if m.group(0)[0] == '"':
                part = part.encode("utf-8", "backslashreplace").decode("unicode_escape",
                                                                        "replace")
        out.append(part)
    return out


def path_key(path: Sequence[str | int]) -> str:
    """The lookup form of a path: parts joined by ``.``, indices as ``[i]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


class LineIndex:
    """Maps dotted key paths of one TOML text to the lines that define them."""

    def __init__(self, text: str) -> None:
        self._lines: dict[str, list[int]] = defaultdict(list)
        # array-of-tables path -> index of its latest item (O(1) lookups: policies with
        # thousands of groups must not make this quadratic)
        self._array_last: dict[str, int] = {}
        # path -> first line defining something below it (implicit tables)
        self._first_below: dict[str, int] = {}
        counters: dict[str, int] = defaultdict(int)
        table: list[str | int] = []
        in_multiline: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_multiline is not None:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            header = _HEADER_RE.match(line)
            if header:
                parts = _parts(header.group(2))
                table = [*self._resolve(parts[:-1]), parts[-1]]
                if header.group(1) == "[[":
                    base = path_key(table)
                    table.append(counters[base])
                    self._array_last[base] = counters[base]
                    counters[base] += 1
                self._add(table, number)
                continue
            keyline = _KEYLINE_RE.match(line)
            if keyline:
                full = [*table, *_parts(keyline.group(1))]
                self._add(full, number)
                rest = line[keyline.end():]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_multiline = quote
                        break

    def _add(self, path: list[str | int], number: int) -> None:
        key = ""
        for part, after in itertools.pairwise(path):  # each proper prefix, as path_key has it
            key += f"[{part}]" if isinstance(part, int) else ("." if key else "") + part
            if not isinstance(after, int):  # an array of tables itself stays ambiguous
                self._first_below.setdefault(key, number)
        self._lines[path_key(path)].append(number)

    def _resolve(self, parts: list[str]) -> list[str | int]:
        """Headers name absolute paths, but ``[a.b]`` after ``[[a]]`` continues the last
        item of array ``a``: re-insert the latest index after each array prefix."""
        out: list[str | int] = []
        for part in parts:
            out.append(part)
            last = self._last_index(path_key(out))
            if last is not None:
                out.append(last)
        return out

    def _last_index(self, prefix: str) -> int | None:
        return self._array_last.get(prefix)

    def find(self, path: Sequence[str | int]) -> int | None:
        """The line of ``path`` (or the first line below it when it is an implicit table,
        or the line of its nearest parent found), when unambiguous."""
        parts = list(path)
        below = self._first_below.get(path_key(parts))
        while parts:
            lines = self._lines.get(path_key(parts))
            if lines:
                return lines[0] if len(lines) == 1 else None
            if below is not None:
                return below
            parts.pop()
        return None
