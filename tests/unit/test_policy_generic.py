"""The generic write path with the cpuset controller: policy keys of registered
controllers (governor/policy/generic.py), Limits.extra, the plan's enables and resets,
and the systemd unit properties."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.controllers.base import BadKeyValue, Controller, Host, PolicyKey
from governor.enforce import apply_plan, desired_state, make_plan
from governor.policy import Limits, PolicyInvalid, parse_policy
from governor.policy.model import IoMax
from governor.systemd.units import Unexpressible, unit_properties
from tests.unit.cgroupfs_fake import LEAF_FILES, create_child

HOST = Host(cpus=frozenset({0, 1}), mems=frozenset({0}),
            controllers=frozenset({"cpu", "cpuset", "io", "memory", "pids"}))

POLICY = """
[tenants.acme]
cpuset.cpus = "0-1"
memory.max = "1G"
[tenants.acme.groups.web]
cpuset.cpus = "1"
cpuset.mems = [0]
pids.max = 64
[tenants.acme.groups.db]
cpuset = { cpus = "0,1" }
[tenants.other.groups.plain]
memory.max = "1G"
"""


def load(text: str, host: Host = HOST):  # type: ignore[no-untyped-def]
    return parse_policy([("p.toml", text)], host=host)


def problems(text: str, host: Host = HOST) -> list[tuple[str, object, str]]:
    with pytest.raises(PolicyInvalid) as e:
        load(text, host)
    return [(p.key, p.value, p.message) for p in e.value.problems]


# -- policy --------------------------------------------------------------------------------
def test_keys_in_tenant_and_group_tables() -> None:
    p = load(POLICY)
    acme = p.tenants["acme"]
    assert acme.limits.extra == (("cpuset.cpus", "0-1"),)
    web = acme.groups["web"].limits
    assert web.extra == (("cpuset.cpus", "1"), ("cpuset.mems", "0"))
    # an inline table flattens like dotted keys; written in the kernel's spelling
    assert acme.groups["db"].limits.extra == (("cpuset.cpus", "0-1"),)
    assert p.tenants["other"].groups["plain"].limits.extra == ()


def test_limits_files_append_extra_after_the_fixed_files() -> None:
    web = load(POLICY).tenants["acme"].groups["web"].limits
    assert web.files() == [("pids.max", "64"), ("cpuset.cpus", "1"), ("cpuset.mems", "0")]
    assert web.controllers() == frozenset({"pids", "cpuset"})
    full = Limits(memory_max=1 << 30, io_max=(IoMax("254:0", 254, 0, wbps=1),),
                  memory_oom_group=True, extra=(("cpuset.mems", "0"), ("cpuset.cpus", "1")))
    assert [f for f, _ in full.files()] == ["memory.max", "io.max", "memory.oom.group",
                                            "cpuset.mems", "cpuset.cpus"]


def test_order_is_the_declarations_not_the_files() -> None:
    p = load('[tenants.a.groups.g]\ncpuset.mems = "0"\ncpuset.cpus = "1"\n')
    assert p.tenants["a"].groups["g"].limits.extra == (("cpuset.cpus", "1"),
                                                       ("cpuset.mems", "0"))


def test_digest_unchanged_without_generic_keys_and_changed_with_them() -> None:
    plain = '[tenants.a.groups.g]\nmemory.max = "1G"\n'
    assert load(plain).digest == load(plain, Host()).digest
    with_cpus = load(plain + 'cpuset.cpus = "1"\n')
    assert with_cpus.digest != load(plain).digest
    assert load(plain + 'cpuset.cpus = "1"\n').digest == load(
        plain + "cpuset.cpus = [1]\n").digest


def test_bad_values_name_file_key_and_value() -> None:
    got = problems('[tenants.a]\ncpuset.cpus = "7"\n[tenants.a.groups.g]\n'
                   'cpuset.mems = ""\ncpuset.cpus = "x"\n')
    assert got == [
        ("tenants.a.cpuset.cpus", "7",
         '"7" names CPU 7, which this host does not have (online: 0-1)'),
        ("tenants.a.groups.g.cpuset.mems", "",
         '"" is empty, which the kernel takes as "the parent\'s memory nodes"; remove the '
         "key instead"),
        ("tenants.a.groups.g.cpuset.cpus", "x",
         "\"x\" is not a CPU list like \"0-3,5\" or [0, 1]: 'x' is not a number or a range "
         "like 0-3"),
    ]
    with pytest.raises(PolicyInvalid) as e:
        load('[tenants.a]\ncpuset.cpus = "7"\n')
    assert str(e.value.problems[0]).startswith("p.toml:2: tenants.a.cpuset.cpus: ")


def test_unknown_keys_suggest_the_generic_ones() -> None:
    got = problems('[tenants.a]\ncpuset.cpu = "1"\n[tenants.a.groups.g]\ncpuset.mem = "0"\n')
    assert [m for _, _, m in got] == ["unknown key cpuset.cpu; did you mean cpuset.cpus?",
                                      "unknown key cpuset.mem; did you mean cpuset.mems?"]
    got = problems('[tenants.a.groups.g]\ncpusett = { cpus = "1" }\n')
    assert got[0][2] == "unknown key cpusett; did you mean cpuset.cpus?"


def test_controller_the_host_does_not_offer() -> None:
    host = Host(cpus=frozenset({0}), controllers=frozenset({"cpu", "io", "memory", "pids"}))
    got = problems('[tenants.a]\ncpuset.cpus = "0"\n', host)
    assert got == [("tenants.a.cpuset.cpus", "0",
                    "cpuset.cpus needs the cpuset controller, which this host's cgroup v2 "
                    "hierarchy does not offer (cgroup.controllers: cpu io memory pids); "
                    "remove the key, or enable cpuset in the kernel (on a hybrid host "
                    "cgroup v1 may hold it)")]


def test_unknown_host_facts_skip_the_checks() -> None:
    p = load('[tenants.a]\ncpuset.cpus = "63"\n', Host())
    assert p.tenants["a"].limits.extra == (("cpuset.cpus", "63"),)


def test_host_probed_lazily_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def probe(cls: type[Host], sys_root: str = "/sys") -> Host:
        calls.append(1)
        return HOST

    monkeypatch.setattr(Host, "probe", classmethod(probe))
    parse_policy([("p.toml", '[tenants.a]\nmemory.max = "1G"\n')])
    assert calls == []   # no generic key: the host's files are never read
    parse_policy([("p.toml", '[tenants.a]\ncpuset.cpus = "1"\n[tenants.b]\ncpuset.cpus = "0"\n')])
    assert calls == [1]


def test_host_probe_reads_sys(tmp_path: Path) -> None:
    (tmp_path / "devices/system/cpu").mkdir(parents=True)
    (tmp_path / "devices/system/cpu/online").write_text("0-1\n")
    (tmp_path / "fs/cgroup").mkdir(parents=True)
    (tmp_path / "fs/cgroup/cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    h = Host.probe(tmp_path)
    assert h.cpus == frozenset({0, 1})
    assert h.mems is None
    assert h.controllers == frozenset({"cpuset", "cpu", "io", "memory", "pids"})
    assert Host.probe(tmp_path / "nothing").controllers is None


# -- the plan ------------------------------------------------------------------------------
CPUSET_LEAF = {**LEAF_FILES, "cgroup.controllers": "cpuset cpu io memory pids\n",
               "cpuset.cpus": "\n", "cpuset.mems": "\n", "cpuset.cpus.effective": "0-1\n",
               "cpuset.mems.effective": "0\n"}


@pytest.fixture
def mount(tmp_path: Path) -> Path:
    root = tmp_path / "cg"
    root.mkdir()
    for k, v in CPUSET_LEAF.items():
        (root / k).write_text(v)
    (root / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    return root


def _plan(mount: Path, text: str, previous: str | None = None):  # type: ignore[no-untyped-def]
    fs = CgroupFS(mount, verify=False)
    prev = None if previous is None else desired_state(load(previous))
    return make_plan(fs, "gov", desired_state(load(text)), previous=prev,
                     sys_block=str(mount / "none"))


def test_desired_state_enables_cpuset_where_a_group_writes_it() -> None:
    d = desired_state(load(POLICY))
    assert d.groups["acme"].enable == ("cpu", "io", "memory", "pids", "cpuset")
    assert d.groups["other"].enable == ("cpu", "io", "memory", "pids")
    assert d.controllers() == ("cpu", "io", "memory", "pids", "cpuset")


def test_fresh_tree_creates_with_cpuset_enabled(mount: Path) -> None:
    plan = _plan(mount, POLICY)
    creates = [(a.path, a.new) for a in plan.actions if a.kind == "create"]
    assert creates[0] == ("gov", "enable cpu io memory pids cpuset for children")
    assert ("gov/acme", "enable cpu io memory pids cpuset for children") in creates
    assert ("gov/other", "enable cpu io memory pids for children") in creates
    sets = [(a.path, a.file, a.new) for a in plan.actions if a.kind == "set"]
    assert ("gov/acme/web", "cpuset.cpus", "1") in sets
    assert ("gov/acme/web", "cpuset.mems", "0") in sets
    # carried out on the fake: the controllers are enabled top-down, root included
    apply_plan(CgroupFS(mount, verify=False), plan)
    assert "+cpuset" in (mount / "cgroup.subtree_control").read_text()


def _changes(plan) -> list[object]:  # type: ignore[no-untyped-def]
    """The plan's sets and enables (the fake's directories carry no mark: adopted)."""
    return [a for a in plan.writes if a.kind in ("set", "enable")]


def _existing(mount: Path, acme_cpus: str = "\n") -> None:
    sub = create_child(mount, "gov", CPUSET_LEAF)
    (sub / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    t = create_child(sub, "acme", CPUSET_LEAF)
    (t / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    (t / "cpuset.cpus").write_text(acme_cpus)
    create_child(t, "web", CPUSET_LEAF)


def test_existing_tree_enables_cpuset_top_down(mount: Path) -> None:
    (mount / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    _existing(mount)
    plan = _plan(mount, '[tenants.acme.groups.web]\ncpuset.cpus = "1"\n')
    enables = [(a.path, a.new) for a in plan.actions if a.kind == "enable"]
    assert enables == [("", "+cpuset"), ("gov", "+cpuset"), ("gov/acme", "+cpuset")]


def test_no_cpuset_key_no_cpuset_enable(mount: Path) -> None:
    _existing(mount)
    plan = _plan(mount, '[tenants.acme.groups.web]\npids.max = 5\n')
    assert [a for a in plan.actions if a.kind == "enable"] == []


def test_normalised_value_reads_back_equal(mount: Path) -> None:
    _existing(mount, acme_cpus="0-1\n")
    (mount / "cgroup.subtree_control").write_text("cpuset cpu io memory pids\n")
    for d in ("gov", "gov/acme"):
        (mount / d / "cgroup.subtree_control").write_text("cpuset cpu io memory pids\n")
    plan = _plan(mount, '[tenants.acme]\ncpuset.cpus = "0,1"\n[tenants.acme.groups.web]\n')
    assert _changes(plan) == []


def test_a_key_that_left_is_reset_to_empty(mount: Path) -> None:
    _existing(mount, acme_cpus="1\n")
    before = '[tenants.acme]\ncpuset.cpus = "1"\n[tenants.acme.groups.web]\n'
    plan = _plan(mount, "[tenants.acme.groups.web]\n", previous=before)
    sets = [(a.path, a.file, a.old, a.new) for a in plan.actions if a.kind == "set"]
    assert sets == [("gov/acme", "cpuset.cpus", "1", "")]
    apply_plan(CgroupFS(mount, verify=False), plan)
    # the writer sends a newline for an empty value, as `echo > cpuset.cpus` does (the
    # fake's file is not truncated: the kernel's files take each write whole)
    assert (mount / "gov/acme/cpuset.cpus").read_text().startswith("\n")
    assert _changes(_plan(mount, "[tenants.acme.groups.web]\n", previous=before)) == []


def test_empty_write_is_a_newline(tmp_path: Path) -> None:
    (tmp_path / "cpuset.cpus").write_text("")
    CgroupFS(tmp_path, verify=False).write("", "cpuset.cpus", "")
    assert (tmp_path / "cpuset.cpus").read_bytes() == b"\n"
    assert os.path.getsize(tmp_path / "cpuset.cpus") == 1


# -- systemd -------------------------------------------------------------------------------
def test_unit_properties_fall_back_to_the_controllers() -> None:
    assert unit_properties("cpuset.cpus", "1", version=252) == [
        ("AllowedCPUs", ("ay", b"\x02"))]
    assert unit_properties("cpuset.mems", "0", version=244) == [
        ("AllowedMemoryNodes", ("ay", b"\x01"))]
    assert unit_properties("cpuset.cpus", "", version=252) == [("AllowedCPUs", ("ay", b""))]
    with pytest.raises(Unexpressible, match=r"cpuset.cpus: systemd 243 has no unit "
                                            r"property for it"):
        unit_properties("cpuset.cpus", "1", version=243)
    with pytest.raises(Unexpressible, match="CPUQuotaBurst"):
        unit_properties("cpu.max.burst", "1000", version=252)
    with pytest.raises(Unexpressible, match="governor has no systemd property"):
        unit_properties("rdma.max", "x", version=252)


def test_slice_layout_can_set_cpuset() -> None:
    from governor.systemd.units import SliceLayout

    layout = SliceLayout("governor.slice")
    assert layout.unsettable("cpuset.cpus") is None
    assert layout.unsettable("memory.oom.group") is not None


# -- a key family (hugetlb.<size>.max): a controller registered for the test --------------
@dataclass(frozen=True)
class _Pages(Controller):
    generic = True

    def parse(self, key: str, value: object, host: Host) -> list[tuple[str, str]]:
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadKeyValue(f"{value!r} is not a number of bytes")
        return [(key.replace(".max", ".limit"), str(value))]

    def check(self, writes: Mapping[str, str], host: Host) -> list[tuple[str, str]]:
        return [(f, "too many sizes at once") for f in writes if len(writes) > 2]


PAGES = _Pages(name="pages", doc="a family for the test", keys=(
    PolicyKey("pages.<size>.max", "per size", "1048576",
              pattern=re.compile(r"pages\.[0-9]+[KMG]B\.max")),
    PolicyKey("pages.tenant_only", "tenant only", "1", scopes=frozenset({"tenant"})),
))


@pytest.fixture
def pages(monkeypatch: pytest.MonkeyPatch) -> None:
    from governor.controllers import registry

    monkeypatch.setattr(registry, "CONTROLLERS", (*registry.CONTROLLERS, PAGES))


PAGES_HOST = Host(cpus=frozenset({0, 1}), mems=frozenset({0}),
                  controllers=frozenset({"cpu", "cpuset", "pages"}))


@pytest.mark.usefixtures("pages")
def test_a_key_family_flattens_from_dotted_keys_and_tables() -> None:
    p = load('[tenants.a.groups.g]\npages.2MB.max = 5\npages.1GB.max = 7\n'
             'cpuset.cpus = "1"\n'
             '[tenants.a.groups.h]\npages = { 2MB = { max = 3 } }\n', PAGES_HOST)
    g = p.tenants["a"].groups["g"].limits
    # registry order: cpuset first; within the family, by file
    assert g.extra == (("cpuset.cpus", "1"), ("pages.1GB.limit", "7"),
                       ("pages.2MB.limit", "5"))
    assert p.tenants["a"].groups["h"].limits.extra == (("pages.2MB.limit", "3"),)


@pytest.mark.usefixtures("pages")
def test_a_key_family_reports_scope_values_checks_and_suggestions() -> None:
    got = problems('[tenants.a.groups.g]\npages.2MB.max = "x"\npages.tenant_only = 1\n'
                   "pages.2MB.maxx = 1\n", PAGES_HOST)
    assert got == [
        ("tenants.a.groups.g.pages.2MB.max", "x", "'x' is not a number of bytes"),
        ("tenants.a.groups.g.pages.tenant_only", 1,
         "pages.tenant_only is not a group key: set it in a tenant table"),
        ("tenants.a.groups.g.pages.2MB.maxx", 1,
         "unknown key pages.2MB.maxx; did you mean pages.<size>.max?"),
    ]
    got = problems('[tenants.a.groups.g]\npages.2MB.max = 1\npages.1GB.max = 1\n'
                   "pages.64KB.max = 1\n", PAGES_HOST)
    # reported against each key, in the file's line order
    assert sorted((k, m) for k, _, m in got) == [
        ("tenants.a.groups.g.pages.1GB.max", "too many sizes at once"),
        ("tenants.a.groups.g.pages.2MB.max", "too many sizes at once"),
        ("tenants.a.groups.g.pages.64KB.max", "too many sizes at once")]
