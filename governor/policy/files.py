"""Reading policy files: TOML text, single files and ``policy.d`` drop-in directories,
each refused with a problem (never an exception) when it is too large, too deep, not a
regular file or not TOML (part of :mod:`governor.policy.loader`)."""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from governor.policy.context import Doc
from governor.policy.lines import LineIndex
from governor.policy.problems import Problem

#: a drop-in larger than this is refused unread
MAX_FILE_BYTES: Final = 1 << 20
#: deepest nesting of tables/arrays accepted (the real format needs about 8)
MAX_DEPTH: Final = 16
_TOML_POS: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*\Z")


def _depth(value: object) -> int:
    """Nesting depth of parsed TOML, iteratively (no recursion on hostile input)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def parse_text(name: str, text: str, problems: list[Problem]) -> Doc | None:
    lines = LineIndex(text)
    try:
        data = tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        pos = _TOML_POS.search(msg)
        line = int(pos.group(1)) if pos else None
        if pos:
            msg = f"{msg[:pos.start()]} (column {pos.group(2)})"
        problems.append(Problem(name, "", None, f"TOML syntax error: {msg}", line))
        return None
    except RecursionError:
        problems.append(Problem(name, "", None, "nesting too deep to parse"))
        return None
    if _depth(data) > MAX_DEPTH:
        problems.append(Problem(name, "", None,
                                f"tables and arrays nest deeper than {MAX_DEPTH} levels"))
        return None
    return Doc(name, text, data, lines)


def _read_file(path: str, name: str, problems: list[Problem]) -> Doc | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        problems.append(Problem(name, "", None, f"cannot open: {exc.strerror}"))
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            problems.append(Problem(name, "", None, "not a regular file"))
            return None
        if st.st_size > MAX_FILE_BYTES:
            problems.append(Problem(name, "", st.st_size,
                                    f"file is {st.st_size} bytes; the limit is 1 MiB"))
            return None
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        problems.append(Problem(name, "", None, f"cannot read: {exc.strerror}"))
        return None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        problems.append(Problem(name, "", None, "file grew above the 1 MiB limit"))
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        problems.append(Problem(name, "", None, "not UTF-8 text (TOML files are UTF-8)",
                                line))
        return None
    return parse_text(name, text, problems)


def read_paths(paths: Sequence[str | Path], problems: list[Problem]) -> list[Doc]:
    docs: list[Doc] = []
    seen: set[str] = set()

    def read(full: str, name: str) -> None:
        real = os.path.realpath(full)
        if real in seen:
            return
        seen.add(real)
        doc = _read_file(full, name, problems)
        if doc is not None:
            docs.append(doc)

    for given in paths:
        display = str(given)
        try:
            is_dir = os.path.isdir(given)
            exists = os.path.exists(given)
        except (OSError, ValueError):
            is_dir = exists = False
        if not exists:
            problems.append(Problem(display, "", None, "no such file or directory"))
            continue
        if not is_dir:
            read(os.fspath(given), display)
            continue
        try:
            names = sorted(os.listdir(given))
        except OSError as exc:
            problems.append(Problem(display, "", None, f"cannot list: {exc.strerror}"))
            continue
        dir_real = os.path.realpath(given)
        for entry in names:
            if not entry.endswith(".toml") or entry.startswith("."):
                continue
            full = os.path.join(given, entry)
            name = os.path.join(display, entry)
            if os.path.islink(full):
                target = os.path.realpath(full)
                if os.path.commonpath([target, dir_real]) != dir_real:
                    problems.append(Problem(
                        name, "", os.readlink(full),
                        f"is a symlink to {target}, outside {display}; drop-ins must stay "
                        "inside their directory"))
                    continue
            read(full, name)
    return docs
