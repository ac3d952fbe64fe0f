"""Fuzzing: no input, however hostile, makes the loader raise anything but PolicyInvalid,
and whatever it accepts yields group paths that are safe names."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from governor.cgroupfs.names import check_name
from governor.policy import Policy, PolicyInvalid, load_policy, parse_policy


def _fake_resolver(path: str) -> tuple[int, int]:
    if path == "/dev/vda":
        return (253, 0)
    raise OSError(2, "No such file or directory", path)


def _check(texts: list[str]) -> None:
    try:
        policy = parse_policy([(f"f{i}.toml", t) for i, t in enumerate(texts)],
                              device_resolver=_fake_resolver)
    except PolicyInvalid as exc:
        assert exc.problems and any(p.severity == "error" for p in exc.problems)
        for p in exc.problems:
            json.dumps(p.to_json())  # every problem is JSON-serialisable
            assert str(p)
        return
    _assert_safe(policy)


def _assert_safe(policy: Policy) -> None:
    for group in policy.groups():
        tenant, name = group.path.split("/")
        assert check_name(tenant, what="tenant") == tenant
        assert check_name(name) == name
        for file, value in group.limits.files():
            assert "\n" not in value and file.split(".")[0] in group.limits.controllers()
    assert len(policy.digest) == 64


# --- a tiny TOML writer for generated documents -------------------------------------------

def _key(k: str) -> str:
    return json.dumps(k)


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"


def _doc(data: dict[str, object]) -> str:
    return "\n".join(f"{_key(k)} = {_value(v)}" for k, v in data.items()) + "\n"


_names = st.one_of(
    st.sampled_from(["acme", "web", "db", "..", ".", "a/b", "memory.max", "cpu.x", "-x",
                     "a" * 65, "", "ok-1", "x\x00y", "é", "standard"]),
    st.text(min_size=0, max_size=12),
)
_scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70) .filter(lambda i: -(2**63) <= i < 2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(["max", "512M", "1.5", "150000 100000", "10ms", "12XB", "0", "-1",
                     "/dev/vda", "/dev/nope", "8:0", "EUR", "usage", "log", "((", "0.040",
                     "NaN", "1e999", "max 1000", " 1G "]),
    st.text(max_size=10),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=0)),
    st.dates(),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(_names, inner, max_size=3)),
    max_leaves=8,
)
_limit_keys = st.sampled_from([
    "memory.min", "memory.low", "memory.high", "memory.max", "memory.swap.max", "cpu.weight",
    "cpu.shares", "cpu.max", "cpus", "cpu.max.burst", "io.weight", "io.blkio_weight",
    "io.max", "pids.max", "oom.group_kill", "oom.actions", "oom.pressure", "match", "plan",
    "memory.maxx", "groups",
])
_group = st.dictionaries(_limit_keys, _values, max_size=6)
_tenant = st.fixed_dictionaries({"groups": st.dictionaries(_names, _group, max_size=3)},
                                optional={"plan": _values, "memory.max": _values,
                                          "memory.min": _values, "memory.low": _values,
                                          "cpu.weight": _values})
_plan = st.dictionaries(
    st.sampled_from(["currency", "cpu_core_hour", "memory_gib_hour", "io_read_gib",
                     "io_write_gib", "oom_kill", "memory_basis", "prices", "bogus"]),
    _values, max_size=8)
_policy_data = st.fixed_dictionaries({
    "tenants": st.dictionaries(_names, _tenant, max_size=3),
    "plans": st.dictionaries(_names, _plan, max_size=2),
})


def _nest_dotted(table: dict[str, object]) -> dict[str, object]:
    """Turn "memory.max" keys into nested tables, as an operator's dotted keys would."""
    out: dict[str, object] = {}
    for key, value in table.items():
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node.setdefault(parts[-1], value)
    return out


def _to_toml(data: dict[str, object]) -> str:
    tenants = data["tenants"]
    assert isinstance(tenants, dict)
    shaped = {
        "plans": data["plans"],
        "tenants": {
            name: {
                **_nest_dotted({k: v for k, v in t.items() if k != "groups"}),
                "groups": {g: _nest_dotted(body) for g, body in t["groups"].items()},
            }
            for name, t in tenants.items()
        },
    }
    return _doc(shaped)


FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_never_crash(data: bytes) -> None:
    _check([data.decode("utf-8", "replace")])


@FUZZ
@given(st.text(alphabet=st.sampled_from(list('[]{}="\'.,=#\n tenants.groups memory.max 1G')),
               max_size=200))
def test_random_toml_like_text_never_crashes(text: str) -> None:
    _check([text])


@FUZZ
@given(st.lists(_policy_data, min_size=1, max_size=3))
def test_random_policies_never_crash(datas: list[dict[str, object]]) -> None:
    _check([_to_toml(d) for d in datas])


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300))
def test_random_files_on_disk_never_crash(tmp_path_factory: pytest.TempPathFactory,
                                          data: bytes) -> None:
    d: Path = tmp_path_factory.mktemp("fuzz")
    (d / "10-x.toml").write_bytes(data)
    try:
        _assert_safe(load_policy([d]))
    except PolicyInvalid as exc:
        assert exc.problems


def test_generated_valid_policy_passes() -> None:
    """The writer above produces TOML the loader understands (guards the fuzzers)."""
    text = _to_toml({"plans": {}, "tenants": {"acme": {
        "memory.max": "1G", "groups": {"web": {"memory.max": "512M", "cpu.weight": 10}}}}})
    policy = parse_policy([("x.toml", text)])
    assert policy.tenants["acme"].groups["web"].limits.files() == [
        ("memory.max", "536870912"), ("cpu.weight", "10")]
