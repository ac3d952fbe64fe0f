"""One error hierarchy: every exception class governor defines is a GovernorError.

The modules of the package are walked (a new module is seen without editing this file), so a
new error class that forgets the base fails here.  The few that stay outside are listed
with the reason.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import pkgutil

import pytest

import governor
from governor.errors import GovernorError

#: classes that are not GovernorErrors, and why (module, name) -> reason
OUTSIDE: dict[tuple[str, str], str] = {
    ("governor.failpoint", "FailpointError"):
        "an injected failure nobody planned for: governor's own handlers must not take it",
}


def _modules() -> list[str]:
    names = []
    for m in pkgutil.walk_packages(governor.__path__, "governor."):
        # __main__ runs the command line; the Alembic scripts run only under Alembic
        if m.name.endswith("__main__") or m.name.startswith("governor.migrations"):
            continue
        names.append(m.name)
    return names


def _exception_classes() -> list[tuple[str, str, type[BaseException]]]:
    out = []
    for name in _modules():
        mod = importlib.import_module(name)
        for attr, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) \
                    and obj.__module__ == name:
                out.append((name, attr, obj))
    return out


CLASSES = _exception_classes()


def test_the_walk_finds_the_known_errors() -> None:
    found = {f"{m}.{n}" for m, n, _ in CLASSES}
    assert {"governor.errors.CgroupError", "governor.cgroupfs.parse.ParseError",
            "governor.store.errors.SchemaOutOfDate", "governor.image.errors.ImageError",
            "governor.policy.units.UnitError"} <= found


@pytest.mark.parametrize(("module", "name", "cls"), CLASSES,
                         ids=[f"{m}.{n}" for m, n, _ in CLASSES])
def test_every_error_is_a_governor_error(module: str, name: str,
                                         cls: type[BaseException]) -> None:
    if (module, name) in OUTSIDE:
        assert not issubclass(cls, GovernorError), \
            f"{module}.{name} joined the hierarchy: take it off OUTSIDE"
        return
    assert issubclass(cls, GovernorError), \
        f"{module}.{name} is not a GovernorError (governor/errors.py)"


def test_outside_lists_only_classes_that_exist() -> None:
    found = {(m, n) for m, n, _ in CLASSES}
    assert set(OUTSIDE) <= found


# --- the classes that joined keep their old bases, messages and attributes ---------------

def test_parse_error_is_still_a_value_error() -> None:
    from governor.cgroupfs.parse import ParseError, parse_int

    with pytest.raises(ValueError, match=r"cannot parse memory.max: .*'12x'") as info:
        parse_int("12x", "memory.max")
    e = info.value
    assert isinstance(e, ParseError) and isinstance(e, GovernorError)
    assert (e.fmt, e.text) == ("memory.max", "12x")


def test_os_errors_keep_errno_and_text() -> None:
    from governor.image.quota import QuotaError
    from governor.image.writable import WritableError
    from governor.placement.rootfs import RootfsError

    for e, err, text in (
        (QuotaError(errno.ENOSPC, "set limit", "/c/1", "free space"), errno.ENOSPC,
         "[Errno 28] set limit on /c/1: [ENOSPC] No space left on device (free space)"),
        (RootfsError(errno.EPERM, "mount /merged"), errno.EPERM,
         "[Errno 1] mount /merged: [EPERM] Operation not permitted"),
        (WritableError(errno.EIO, "/state/containers: mkfs.ext4 failed"), errno.EIO,
         "/state/containers: mkfs.ext4 failed"),
    ):
        assert isinstance(e, OSError) and isinstance(e, GovernorError)
        assert e.errno == err and str(e) == text


def test_value_errors_stay_value_errors() -> None:
    from governor.failpoint import FailpointSpecError
    from governor.policy.patterns import PatternError
    from governor.policy.units import UnitError, parse_size

    for cls in (FailpointSpecError, PatternError, UnitError):
        assert issubclass(cls, ValueError) and issubclass(cls, GovernorError)
    with pytest.raises(UnitError):
        parse_size("12 parsecs")


def test_process_gone_overflow_and_bad_value_keep_their_meaning() -> None:
    from governor.placement.netlink import Overflow
    from governor.placement.procfs import ProcessGone
    from governor.policy.context import BadValue

    e = ProcessGone(4242)
    assert (e.pid, str(e)) == (4242, "process 4242 is gone")
    # none became an OSError or a ValueError: the handlers that catch those (the placer's
    # receive loop, the loader's resolvers) must not take them by accident
    for cls in (ProcessGone, Overflow, BadValue):
        assert issubclass(cls, GovernorError)
        assert not issubclass(cls, (OSError, ValueError))
