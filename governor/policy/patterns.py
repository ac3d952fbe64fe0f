"""``cmdline`` match patterns: regular expressions run on text that tenants control.

A tenant chooses its processes' command lines, so a pattern must never cost more than a
bounded amount of work per process (issue 15: a 200 KB command line took 20 s against a
backtracking pattern, and ``(a+)+$`` never finished).  Two bounds:

* the engine is RE2 (google-re2), which matches in time linear in the text for every
  pattern it accepts: no catastrophic backtracking exists there.  Its syntax is Python's
  ``re`` without backreferences and lookaround (``\\1``, ``(?=``, ``(?!``, ``(?<=``,
  ``(?<!``), which need backtracking; a pattern using them, or too large for RE2's memory
  budget, is refused when the policy is checked, with the reason;
* only the first :data:`CMDLINE_MAX` bytes of a command line are matched (and read from
  ``/proc``): the program and its first arguments, which is what rules name.

The text is matched as UTF-8: a byte of the command line that is not valid UTF-8 (a
command line is any bytes) reads as ``?``, so ``.`` still crosses it.
"""

from __future__ import annotations

import functools
from typing import Any, Final

from governor.errors import GovernorError

#: bytes of a command line a ``cmdline`` pattern sees (one page)
CMDLINE_MAX: Final = 4096


@functools.cache
def _re2() -> tuple[Any, Any]:
    """RE2 and its options, imported with the first pattern compiled: a policy without
    ``cmdline`` rules never loads it (the module and its C++ runtime are 2.7 MiB of the
    daemon's resident memory; issue #16)."""
    import re2  # type: ignore[import-untyped]  # google-re2 ships no type information

    options = re2.Options()
    options.log_errors = False  # the reason is reported as a policy problem, not on stderr
    return re2, options


class PatternError(GovernorError, ValueError):
    """A ``cmdline`` pattern RE2 cannot take; ``str()`` is the reason and the fix."""


class CmdlinePattern:
    """A compiled ``cmdline`` pattern: :meth:`search` anywhere in the first
    :data:`CMDLINE_MAX` bytes of a command line."""

    __slots__ = ("_rx", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        re2, options = _re2()
        try:
            self._rx = re2.compile(pattern.encode("utf-8", "surrogatepass"), options=options)
        except re2.error as e:
            reason = e.args[0] if e.args else e
            if isinstance(reason, bytes):
                reason = reason.decode("utf-8", "replace")
            raise PatternError(f"{reason}{_hint(str(reason))}") from None
        except (TypeError, ValueError, OverflowError) as e:
            raise PatternError(str(e)) from None

    def search(self, cmdline: str) -> bool:
        """True when the pattern occurs in the first :data:`CMDLINE_MAX` bytes."""
        text = cmdline.encode("utf-8", "replace")[:CMDLINE_MAX]  # undecodable bytes: ?
        return self._rx.search(text) is not None

    def __repr__(self) -> str:
        return f"CmdlinePattern({self.pattern!r})"


def _hint(reason: str) -> str:
    """The fix for an RE2 refusal of a pattern Python's ``re`` would take."""
    _, escape, rest = reason.partition("invalid escape sequence: \\")
    if "perl operator" in reason or (escape and rest[:1].isdigit()):
        return ("; lookaround and backreferences are not supported: they need "
                "backtracking, which can take unbounded time on a tenant's command line. "
                "Rewrite the pattern without them, or match on comm or exe")
    if escape and rest[:1] == "Z":
        return "; write \\z (end of text) or $"
    if "too large" in reason or "repetition size" in reason:
        return ("; the pattern is too large for a linear-time match: use smaller "
                "repetition counts (at most 1000) or a shorter pattern")
    return ""


def compile_cmdline(pattern: str) -> CmdlinePattern:
    """Compile a ``cmdline`` pattern; raises :class:`PatternError` with the reason."""
    return CmdlinePattern(pattern)
