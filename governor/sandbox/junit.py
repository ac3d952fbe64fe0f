"""Count a pytest JUnit XML report, for scripts/test.sh's summary and its pass/fail rules.

``python -m governor.sandbox.junit [--strict-skips] [--require-tests] LABEL=FILE ...``
prints one ``LABEL: N passed, N failed, N skipped`` line per report, then ``all: ...`` with
the totals as the last line, and exits 1 when a test failed or errored, when a
``--require-tests`` report ran no test, when a ``--strict-skips`` report skipped one, or
when a report is missing or unreadable.  Labels given as ``LABEL!=FILE`` are the ones the
two options apply to.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Counts:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    xfailed: int = 0

    @property
    def ran(self) -> int:
        return self.passed + self.failed

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.passed + other.passed,
            self.failed + other.failed,
            self.skipped + other.skipped,
            self.xfailed + other.xfailed,
        )

    def line(self, label: str) -> str:
        """``label: N passed, N failed[, N skipped]`` (xfails are counted as skipped)."""
        text = f"{label}: {self.passed} passed, {self.failed} failed"
        if self.skipped or self.xfailed:
            text += f", {self.skipped + self.xfailed} skipped"
        return text


def count_xml(text: str) -> Counts:
    """Classify each ``<testcase>``: failure/error -> failed, skipped, else passed.

    A test with a failing call and an erroring teardown is one failure, not two; a
    collection error (a testcase with an ``<error>``) is a failure.
    """
    root = ET.fromstring(text)  # noqa: S314 - our own pytest's report, not untrusted input
    c = Counts()
    for case in root.iter("testcase"):
        tags = {child.tag for child in case}
        if tags & {"failure", "error"}:
            c.failed += 1
        elif "skipped" in tags:
            sk = case.find("skipped")
            if sk is not None and sk.get("type") == "pytest.xfail":
                c.xfailed += 1
            else:
                c.skipped += 1
        else:
            c.passed += 1
    return c


def count_file(path: Path) -> Counts:
    return count_xml(path.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m governor.sandbox.junit", description=__doc__)
    ap.add_argument("--strict-skips", action="store_true",
                    help="a skipped test in a LABEL!=FILE report is a failure")
    ap.add_argument("--require-tests", action="store_true",
                    help="a LABEL!=FILE report that ran no test is a failure")
    ap.add_argument("reports", nargs="+", metavar="LABEL=FILE")
    args = ap.parse_args(argv)
    total = Counts()
    problems: list[str] = []
    for spec in args.reports:
        label, sep, file = spec.partition("=")
        if not sep:
            ap.error(f"{spec!r}: expected LABEL=FILE")
        checked = label.endswith("!")
        label = label.rstrip("!")
        try:
            c = count_file(Path(file))
        except (OSError, ET.ParseError) as e:
            problems.append(f"{label}: no readable report at {file} ({e})")
            print(f"{label}: no report")
            continue
        total += c
        print(c.line(label))
        if c.failed:
            problems.append(f"{label}: {c.failed} failed")
        if checked and args.require_tests and c.ran == 0:
            problems.append(f"{label}: no test ran")
        if checked and args.strict_skips and c.skipped:
            problems.append(f"{label}: {c.skipped} skipped (not allowed here)")
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    sys.stdout.flush()
    print(total.line("all"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
