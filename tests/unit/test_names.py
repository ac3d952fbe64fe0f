from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from governor.cgroupfs.names import MAX_NAME, check_name, check_relpath
from governor.errors import InvalidName


@pytest.mark.parametrize("name", ["web", "acme", "a", "db-1", "x_y.z", "team@eu", "A9:+-",
                                  "a" * MAX_NAME])
def test_accepts(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(("name", "reason"), [
    ("", "empty"), (".", "leave"), ("..", "leave"), ("a/b", "'/'"), ("../etc", "'/'"),
    ("a\0b", "NUL"), ("a\nb", "control"), ("tab\tx", "control"), (".hidden", "start with '.'"),
    ("-rf", "starting with a letter"), ("a" * (MAX_NAME + 1), "at most"),
    ("memory.max", "interface"), ("cgroup.procs", "interface"), ("CPU.weight", "interface"),
    ("é", "letters"), ("a b", "letters"), (123, "string"), (None, "string"),
])
def test_rejects(name: object, reason: str) -> None:
    with pytest.raises(InvalidName, match=reason) as ei:
        check_name(name)
    assert repr(name)[:20] in str(ei.value) or name == ""


def test_relpath() -> None:
    assert check_relpath("acme/web") == "acme/web"
    assert check_relpath("") == ""
    for bad in ("acme/../x", "/abs", "acme//web", "acme/"):
        with pytest.raises(InvalidName):
            check_relpath(bad)


@given(st.text(max_size=80))
def test_accepted_names_are_single_safe_components(name: str) -> None:
    try:
        check_name(name)
    except InvalidName:
        return
    assert "/" not in name and "\0" not in name and name not in (".", "..")
    assert not name.startswith(".") and len(name) <= MAX_NAME
    assert all(0x20 < ord(c) < 0x7F for c in name)
