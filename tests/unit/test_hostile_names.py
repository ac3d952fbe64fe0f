"""Issue #15 item 1: names found in the kernel are data, not policy.

A directory below the subtree whose name no policy may hold (a runtime's
``docker-<64 hex>.scope``, ``web 2``, bytes that are not UTF-8) must never stop the daemon:
it is listed, sampled, stored and shown under its escaped key, and every path that lists
the tree (sampling, status, OOM discovery, plan, reconcile) goes on.  Policy names stay
strict (tests/unit/test_names.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.layout import Layout
from governor.cgroupfs.names import (
    MAX_KEY,
    NAME_MAX,
    check_name,
    display_path,
    escape_name,
    unescape_name,
)
from governor.cgroupfs.reader import StatReader
from governor.enforce import desired_state, make_plan
from governor.enforce.keeper import Enforcer
from governor.errors import GroupGone, InvalidName
from governor.metering.sampler import Sampler
from governor.oom.watch import OomWatcher
from governor.policy import parse_policy
from governor.status.snapshot import take
from governor.store.models import Group, Tenant
from governor.store.service import record_samples
from tests.helpers.db import db_url, engine, session  # noqa: F401
from tests.unit.cgroupfs_fake import READ_PATHS, create_child

DOCKER = "docker-" + "0123456789abcdef" * 4 + ".scope"   # 72 characters
NOT_UTF8 = os.fsdecode(b"\xff\xfe")                      # what os.listdir gives for them

#: (directory name as os.listdir gives it, its key)
HOSTILE = [
    pytest.param(DOCKER, "docker-" + "0123456789abcdef" * 3 + "~" +
                 __import__("hashlib").sha256(DOCKER.encode()).hexdigest()[:8],
                 id="docker-64hex-scope"),
    pytest.param("web 2", "web\\x202", id="space"),
    pytest.param(NOT_UTF8, "\\xff\\xfe", id="not-utf8"),
    pytest.param("a\nb", "a\\x0ab", id="newline"),
    pytest.param("süß", "s\\xc3\\xbc\\xc3\\x9f", id="utf8"),
    pytest.param("a\\x41", "a\\x5cx41", id="backslash"),
    pytest.param("a~b", "a\\x7eb", id="tilde"),
    pytest.param(".hidden", ".hidden", id="leading-dot"),
    pytest.param("é" * 127, None, id="254-bytes"),
]


@pytest.mark.parametrize(("raw", "key"), HOSTILE)
def test_escape_name_gives_a_bounded_key_that_finds_the_directory(raw: str,
                                                                  key: str | None) -> None:
    got = escape_name(raw)
    if key is not None:
        assert got == key
    assert len(got) <= MAX_KEY and got.isascii() and got.isprintable() and "/" not in got
    assert unescape_name(got) == raw
    got.encode()  # a key is always valid text (labels, rows, JSON)


@pytest.mark.parametrize("name", ["web", "acme", "db-1", "x_y.z", "team@eu", "A9:+-",
                                  "a" * 64])
def test_a_policy_name_is_its_own_key(name: str) -> None:
    assert escape_name(check_name(name)) == name and unescape_name(name) == name


@pytest.mark.parametrize(("key", "why"), [
    ("a\\x2fb", "'/'"), ("a\\x00b", "NUL"), ("\\x2e\\x2e", "leave"), ("..", "leave"),
    ("a\\zz", "backslash"), ("a\\x4", "backslash"), ("x~0000000f", "not listed"),
    ("a" * (NAME_MAX + 1), "NAME_MAX"),
])
def test_unescape_refuses_a_key_that_is_no_directory(key: str, why: str) -> None:
    with pytest.raises(InvalidName, match=why):
        unescape_name(key)


@given(st.binary(min_size=1, max_size=NAME_MAX).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")))
def test_every_kernel_name_round_trips(data: bytes) -> None:
    raw = os.fsdecode(data)
    key = escape_name(raw)
    assert len(key) <= MAX_KEY and key.isascii() and key.isprintable()
    assert os.fsencode(unescape_name(key)) == data


def test_display_path_of_a_name_that_is_not_text() -> None:
    assert display_path("governor.slice/acme/web") == "governor.slice/acme/web"
    assert display_path(f"governor.slice/{NOT_UTF8}/a\nb") == \
        "governor.slice/\\xff\\xfe/a\\x0ab"


# -- the daemon's paths over a tree with hostile names ----------------------------------------
POLICY = "[tenants.acme]\n[tenants.acme.groups.web]\nmemory.max = \"512M\"\n"
GOOD = ["acme", "acme/web"]


@pytest.fixture(params=[p.values for p in HOSTILE], ids=[p.id for p in HOSTILE])
def hostile(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[CgroupFS, str]]:
    """A cgroup tree with the policy's ``acme/web`` and the hostile name both as a tenant
    (below the subtree) and as a group (below ``acme``)."""
    raw, _ = request.param
    root = tmp_path / "cg"
    root.mkdir()
    sub = create_child(root, "governor.slice")
    acme = create_child(sub, "acme")
    create_child(acme, "web")
    create_child(sub, raw)
    create_child(acme, raw)
    fs = CgroupFS(root, verify=False)
    try:
        yield fs, escape_name(raw)
    finally:
        fs.close()


@pytest.mark.parametrize("accelerated", READ_PATHS)
def test_sampling_pass_samples_hostile_names_under_their_key(
        hostile: tuple[CgroupFS, str], accelerated: bool) -> None:
    fs, key = hostile
    s = Sampler(fs, "governor.slice", "n1", accelerated=accelerated)
    try:
        for _ in range(3):  # the slow tier, the fast tier, the C fast pass once fds are open
            p = s.sample()
            assert p.errors == [] and p.gone == []
            assert sorted(x.path for x in p.samples) == sorted([*GOOD, key, f"acme/{key}"])
            odd = {x.path: x for x in p.samples}[f"acme/{key}"]
            assert odd.tenant == "acme" and odd.group == key
            assert odd.cpu_usage_usec == 52083 and odd.memory_current == 270336
    finally:
        s.close()


def test_status_snapshot_and_oom_discovery_list_hostile_names(
        hostile: tuple[CgroupFS, str]) -> None:
    fs, key = hostile
    with StatReader(fs) as reader:
        snap = take(fs, "governor.slice", reader)
    assert sorted(snap.groups) == sorted([*GOOD, key, f"acme/{key}"])
    w = OomWatcher(fs, "governor.slice", "n1", use_inotify=False)
    try:
        w.rescan(startup=True)
        assert sorted(w.discover()) == sorted([*GOOD, key, f"acme/{key}"])
    finally:
        w.close()


def test_plan_start_and_reconcile_go_on_over_hostile_names(
        hostile: tuple[CgroupFS, str], tmp_path: Path) -> None:
    fs, key = hostile
    pol = parse_policy([("p.toml", POLICY)])
    plan = make_plan(fs, "governor.slice", desired_state(pol), sys_block=str(tmp_path / "x"))
    # made by no governor: left, and the note shows the name as its key (printable)
    notes = [a for a in plan.actions if a.kind == "note"]
    raw = unescape_name(key)
    assert sorted(a.path for a in notes) == sorted(
        [display_path(f"governor.slice/{raw}"), display_path(f"governor.slice/acme/{raw}")])
    assert not [a for a in plan.actions if a.kind in ("remove", "keep")]
    for a in plan.actions:
        str(a).encode()
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(POLICY)
    policy_file.chmod(0o644)
    e = Enforcer(fs, "governor.slice", str(policy_file), sys_block=str(tmp_path / "x"))
    assert e.reload(trigger="start")
    e.reconcile()
    assert fs.exists(f"governor.slice/{raw}") and fs.exists(f"governor.slice/acme/{raw}")


def test_group_of_a_proc_path_is_the_key() -> None:
    lay = Layout("governor.slice")
    assert lay.group_of("/governor.slice/acme/web 2") == "acme/web\\x202"
    assert lay.group_of(f"/governor.slice/{NOT_UTF8}") == "\\xff\\xfe"
    assert lay.group_of("/governor.slice/acme/web") == "acme/web"
    assert lay.path("acme/web\\x202") == "governor.slice/acme/web 2"


def test_errors_about_a_hostile_name_print(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    root.mkdir()
    fs = CgroupFS(root, verify=False)
    with pytest.raises(GroupGone) as ei:
        fs.read(f"governor.slice/{NOT_UTF8}", "cpu.stat")
    assert "governor.slice/\\xff\\xfe" in str(ei.value)
    str(ei.value).encode()


def test_hostile_keys_are_stored_for_billing(hostile: tuple[CgroupFS, str],
                                             session) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """The keys fit the store's name columns (64) on both dialects."""
    fs, key = hostile
    s = Sampler(fs, "governor.slice", "n1", accelerated=False)
    samples = s.sample().samples
    s.close()
    record_samples(session=session, node="n1", samples=samples)
    session.commit()
    assert key in set(session.execute(select(Tenant.name)).scalars())
    assert f"acme/{key}" in set(session.execute(select(Group.path)).scalars())
