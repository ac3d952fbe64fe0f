"""Reading policy files and policy.d directories: order, refusals, syntax errors, lines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from governor.policy import PolicyInvalid, Problem, load_policy, parse_policy
from governor.policy.context import stat_block_device
from governor.policy.files import MAX_DEPTH
from governor.policy.lines import LineIndex

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policy.d"


def tenant(name: str, group: str = "g") -> str:
    return f'[tenants.{name}]\nmemory.max = "1G"\n[tenants.{name}.groups.{group}]\npids.max = 10\n'


def load_problems(*paths: Path | str) -> list[Problem]:
    with pytest.raises(PolicyInvalid) as info:
        load_policy(list(paths))
    return info.value.problems


def test_drop_ins_merge_in_name_order(tmp_path: Path) -> None:
    d = tmp_path / "policy.d"
    d.mkdir()
    (d / "20-b.toml").write_text(tenant("bravo"))
    (d / "10-a.toml").write_text(tenant("alpha"))
    (d / "30-c.toml").write_text(tenant("charlie"))
    (d / "README.md").write_text("not policy")
    (d / "40-d.toml.bak").write_text("garbage [")
    (d / ".50-e.toml").write_text("editor swap file [")
    policy = load_policy([d])
    assert list(policy.tenants) == ["alpha", "bravo", "charlie"]
    assert policy.sources == tuple(str(d / n) for n in ("10-a.toml", "20-b.toml", "30-c.toml"))
    assert policy.tenants["bravo"].source == str(d / "20-b.toml")
    assert policy.tenants["bravo"].groups["g"].source == str(d / "20-b.toml")


def test_files_and_directories_mix_in_the_given_order(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.toml").write_text(tenant("zulu"))
    single = tmp_path / "single.toml"
    single.write_text(tenant("alpha"))
    assert list(load_policy([single, d]).tenants) == ["alpha", "zulu"]
    assert list(load_policy([d, single]).tenants) == ["zulu", "alpha"]
    # the same file reached twice is read once, not reported as a duplicate
    assert list(load_policy([d, d / "a.toml"]).tenants) == ["zulu"]


def test_duplicate_tenant_across_drop_ins_names_both_files(tmp_path: Path) -> None:
    (tmp_path / "10-a.toml").write_text(tenant("acme"))
    (tmp_path / "20-b.toml").write_text(tenant("acme", "other"))
    [problem] = load_problems(tmp_path)
    assert problem.file == str(tmp_path / "20-b.toml")
    assert problem.key == "tenants.acme"
    assert str(tmp_path / "10-a.toml") in problem.message
    assert problem.line == 1


def test_duplicate_plan_across_drop_ins(tmp_path: Path) -> None:
    plan = ('[plans.p]\ncurrency = "EUR"\ncpu_core_hour = "1"\nmemory_gib_hour = "1"\n'
            'io_read_gib = "1"\nio_write_gib = "1"\n')
    (tmp_path / "a.toml").write_text(plan)
    (tmp_path / "b.toml").write_text(plan)
    [problem] = load_problems(tmp_path)
    assert problem.key == "plans.p" and "already defined in" in problem.message


def test_symlink_outside_the_directory_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "policy.d"
    d.mkdir()
    outside = tmp_path / "elsewhere.toml"
    outside.write_text(tenant("evil"))
    (d / "10-evil.toml").symlink_to(outside)
    (d / "20-ok.toml").write_text(tenant("good"))
    (d / "real").mkdir()
    (d / "real" / "inner.toml").write_text(tenant("inner"))
    (d / "30-inside.toml").symlink_to(d / "real" / "inner.toml")
    [problem] = load_problems(d)
    assert problem.file == str(d / "10-evil.toml")
    assert "outside" in problem.message and "symlink" in problem.message


def test_symlink_inside_the_directory_is_followed(tmp_path: Path) -> None:
    d = tmp_path / "policy.d"
    (d / "real").mkdir(parents=True)
    (d / "real" / "inner.toml").write_text(tenant("inner"))
    (d / "30-inside.toml").symlink_to(d / "real" / "inner.toml")
    assert list(load_policy([d]).tenants) == ["inner"]


def test_file_over_one_mib_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    [problem] = load_problems(big)
    assert "1 MiB" in problem.message and problem.file == str(big)


def test_parse_policy_refuses_big_text() -> None:
    with pytest.raises(PolicyInvalid, match="1 MiB"):
        parse_policy([("big", "#" * ((1 << 20) + 1))])


def test_deep_nesting_is_refused_not_crashed() -> None:
    deep = "a = " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"
    with pytest.raises(PolicyInvalid, match="nest deeper"):
        parse_policy([("deep.toml", deep)])
    very_deep = "a = " + "[" * 100_000 + "]" * 100_000 + "\n"
    with pytest.raises(PolicyInvalid) as info:
        parse_policy([("deeper.toml", very_deep)])
    assert "nest" in info.value.problems[0].message


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    f = tmp_path / "broken.toml"
    f.write_text('[tenants.acme]\nmemory.max = "1G"\ncpu.weight = = 3\n')
    [problem] = load_problems(f)
    assert problem.line == 3
    assert problem.message.startswith("TOML syntax error:")
    assert "(column " in problem.message
    assert str(problem).startswith(f"{f}:3: TOML syntax error")


def test_syntax_error_in_one_drop_in_does_not_hide_others(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("[tenants.a\n")
    (tmp_path / "b.toml").write_text('[tenants.b]\ncpu.weight = 0\n')
    found = load_problems(tmp_path)
    assert [(Path(p.file).name, p.line) for p in found] == [("a.toml", 1), ("b.toml", 2)]


def test_not_utf8_is_a_problem(tmp_path: Path) -> None:
    f = tmp_path / "latin1.toml"
    f.write_bytes(b"# ok\n[tenants.caf\xe9]\n")
    [problem] = load_problems(f)
    assert "UTF-8" in problem.message and problem.line == 2


def test_missing_path_and_non_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    found = load_problems(tmp_path / "nope.toml", fifo)
    assert [p.message for p in found] == ["no such file or directory", "not a regular file"]


def test_empty_path_list_is_a_problem() -> None:
    with pytest.raises(PolicyInvalid, match="no policy file"):
        load_policy([])


def test_default_device_resolver_wants_a_block_device(tmp_path: Path) -> None:
    regular = tmp_path / "disk"
    regular.write_text("")
    with pytest.raises(ValueError, match="not a block device"):
        stat_block_device(str(regular))
    text = (f'[tenants.a.groups.g]\nio.max = {{ "{regular}" = {{ wbps = "1M" }} }}\n'
            'io.weight = 10\n')
    with pytest.raises(PolicyInvalid) as info:
        parse_policy([("p.toml", text)])
    [problem] = info.value.problems
    assert problem.key == f'tenants.a.groups.g.io.max."{regular}"'
    assert "unknown device" in problem.message and "not a block device" in problem.message
    assert problem.line == 2


def test_maj_min_needs_no_resolver() -> None:
    def refuse(path: str) -> tuple[int, int]:
        raise AssertionError(f"resolver called for {path}")

    policy = parse_policy([("p.toml", '[tenants.a.groups.g]\nio.max = { "8:0" = { rbps = 1 } }')],
                          device_resolver=refuse)
    assert policy.tenants["a"].groups["g"].limits.files() == [
        ("io.max", "8:0 rbps=1 wbps=max riops=max wiops=max")]


def test_the_examples_are_valid_and_modest() -> None:
    policy = load_policy([EXAMPLES])
    assert len(policy.tenants) == 2 and len(policy.plans) == 2
    assert all(len(t.groups) == 2 for t in policy.tenants.values())
    assert policy.warnings == ()
    for t in policy.tenants.values():
        assert isinstance(t.limits.memory_max, int) and t.limits.memory_max <= 1 << 30
        assert t.plan in policy.plans
        for g in t.groups.values():
            assert g.limits.io_max == ()


# --- line numbers -------------------------------------------------------------------------

LINES_TEXT = """\
# comment
[tenants.acme]
plan = "x"
memory.max = "1G"

[tenants.acme.groups.web]
memory . max = "2G"
"cpu.max.burst" = 5
io.max = { "/dev/vda" = { wbps = 1 } }
[[tenants.acme.groups.web.match]]
user = "a"
[[tenants.acme.groups.web.match]]
user = "b"
note = \"\"\"
user = "not a key"
\"\"\"
[tenants.acme.groups.db.memory]
max = "1G"
[tenants.globex.groups.web]
memory.max = "2G"
"""


@pytest.mark.parametrize(("path", "line"), [
    (("tenants", "acme"), 2),
    (("tenants", "acme", "plan"), 3),
    (("tenants", "acme", "memory", "max"), 4),
    (("tenants", "acme", "memory.max"), 4),
    (("tenants", "acme", "groups", "web", "memory.max"), 7),
    (("tenants", "acme", "groups", "web", "cpu.max.burst"), 8),
    (("tenants", "acme", "groups", "web", "io.max", "/dev/vda", "wbps"), 9),
    (("tenants", "acme", "groups", "web", "match", 0, "user"), 11),
    (("tenants", "acme", "groups", "web", "match", 1), 12),
    (("tenants", "acme", "groups", "web", "match", 1, "user"), 13),
    (("tenants", "acme", "groups", "db", "memory.max"), 18),
    (("tenants", "globex", "groups", "web", "memory", "max"), 20),
    (("tenants", "nobody"), None),
])
def test_line_index(path: tuple[str | int, ...], line: int | None) -> None:
    assert LineIndex(LINES_TEXT).find(path) == line


def test_line_index_says_nothing_when_ambiguous() -> None:
    text = "[a]\nx = 1\n[b]\nx = 2\n[a.c]\n"
    assert LineIndex(text).find(("a", "x")) == 2
    assert LineIndex('[[a]]\n[[a]]\n').find(("a",)) is None


def test_semantic_problem_gets_its_line(tmp_path: Path) -> None:
    f = tmp_path / "acme.toml"
    f.write_text("# acme\n\n[tenants.acme]\n[tenants.acme.groups.web]\n"
                 'cpu.weight = 200\nmemory.max = "12XB"\n')
    [problem] = load_problems(f)
    assert problem.line == 6
    assert str(problem) == (f'{f}:6: tenants.acme.groups.web.memory.max: "12XB" is not a '
                            "size; use bytes or a number with K, M, G or T")


@pytest.mark.parametrize(("text", "line", "key", "hint"), [
    # a dotted key whose first part is misspelt: before, the [table] header's line (2)
    ('[tenants.acme]\n[tenants.acme.groups.web]\ncpus = 1\n\nmemroy.max = "1G"\n', 5,
     "tenants.acme.groups.web.memroy", "did you mean memory.max?"),
    ('[tenants.acme]\ncpus = 1\n\n\noomm.actions = ["log"]\n', 5, "tenants.acme.oomm",
     None),
    ('[tenants.acme.groups.web]\ncpus = 1\n[tenants.acme.groups.web.memorry]\nmax = "1G"\n',
     3, "tenants.acme.groups.web.memorry", "did you mean memory.max?"),
    ('[tenants.acme.groups.web]\ncpus = 1\n\ncpu.wieght = 10\n', 4,
     "tenants.acme.groups.web.cpu.wieght", "did you mean cpu.weight?"),
])
def test_typo_hint_carries_the_key_line(text: str, line: int, key: str,
                                        hint: str | None) -> None:
    with pytest.raises(PolicyInvalid) as e:
        parse_policy([("p.toml", text)])
    [problem] = e.value.problems
    assert (problem.line, problem.key) == (line, key)
    assert problem.message.startswith("unknown key")
    if hint is not None:
        assert problem.message.endswith(hint)


@pytest.mark.parametrize(("files", "says"), [
    ({}, "no *.toml policy file found"),                       # an empty policy.d
    ({"a.toml": "# [tenants.acme]\n# everything commented out\n"}, "no tenants defined"),
    ({"plans.toml": '[plans.p]\ncurrency = "EUR"\ncpu_core_hour = "1"\n'
                    'memory_gib_hour = "1"\nio_read_gib = "1"\nio_write_gib = "1"\n'},
     "no tenants defined"),
])
def test_empty_policy_loads_with_a_warning_naming_the_path(
        tmp_path: Path, files: dict[str, str], says: str) -> None:
    d = tmp_path / "policy.d"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    policy = load_policy([d])
    assert policy.tenants == {}
    [warning] = policy.warnings
    assert (warning.severity, warning.file) == ("warning", str(d))
    assert says in warning.message and "governor manages no tenant" in warning.message
    assert str(warning).startswith(f"{d}: warning: ")


def test_empty_policy_warning_from_policy_check(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from governor.policy.cli import policy

    r = CliRunner().invoke(policy, ["check", str(tmp_path)])
    assert r.exit_code == 0
    assert f"{tmp_path}: warning: no *.toml policy file found" in r.stdout


def test_a_policy_with_tenants_has_no_empty_warning() -> None:
    assert parse_policy([("p.toml", "[tenants.a]\n")]).warnings == ()
