"""Synthetic exporter input for the benchmark and the tests (realistic shapes and values)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal

from governor.cgroupfs.parse import Psi, PsiLine
from governor.cgroupfs.reader import GroupStats
from governor.exporter.render import Health, Snapshot
from governor.metering.sample import GroupSample
from governor.policy.model import Limits
from governor.policy.units import MAX


def stats(rng: random.Random, cid: int, devices: int = 1) -> GroupStats:
    usage = rng.randrange(10**6, 10**13)
    return GroupStats(
        cgroup_id=cid,
        cpu={"usage_usec": usage, "user_usec": usage * 3 // 4, "system_usec": usage // 4,
             "nr_periods": rng.randrange(0, 10**7), "nr_throttled": rng.randrange(0, 10**5),
             "throttled_usec": rng.randrange(0, 10**9), "nr_bursts": 0, "burst_usec": 0},
        memory_current=rng.randrange(1 << 20, 1 << 36),
        memory_peak=rng.randrange(1 << 36, 1 << 37),
        swap_current=rng.choice((0, rng.randrange(0, 1 << 30))),
        memory_events={"low": 0, "high": rng.randrange(0, 1000), "max": rng.randrange(0, 50),
                       "oom": rng.randrange(0, 5), "oom_kill": rng.randrange(0, 5),
                       "oom_group_kill": 0},
        io={f"{8 + d}:{16 * d}": {"rbytes": rng.randrange(0, 1 << 40),
                                  "wbytes": rng.randrange(0, 1 << 40),
                                  "rios": rng.randrange(0, 10**9),
                                  "wios": rng.randrange(0, 10**9), "dbytes": 0, "dios": 0}
            for d in range(devices)},
        pids_current=rng.randrange(0, 4000),
        psi={res: Psi(PsiLine(rng.random() * 10, rng.random() * 5, rng.random(),
                              rng.randrange(0, 10**11)),
                      PsiLine(0.0, 0.0, 0.0, rng.randrange(0, 10**10)))
             for res in ("cpu", "memory", "io")},
    )


def snapshot(groups: int, *, tenants: int = 50, devices: int = 1, seed: int = 1,
             node: str = "node-1", odd_names: bool = False) -> Snapshot:
    """``groups`` groups spread over ``tenants`` tenants (plus the tenants' own rows),
    with policy limits for every group, costs per tenant and a full health block; every
    fourth group's sample has the writable layers of image containers (storage_bytes);
    every group has cpuset's effective lists.
    ``odd_names`` puts characters that must be escaped into node and tenant names (the
    renderer must escape them; real names cannot contain them)."""
    rng = random.Random(seed)
    tnames = [f"tenant-{i:03d}" for i in range(tenants)]
    if odd_names:
        tnames[0] = 'we"ird\\ten\nant'
        node = 'node "1"\\'
    latest: dict[str, GroupStats] = {}
    limits: dict[str, Limits] = {}
    samples: dict[str, GroupSample] = {}
    wall = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
    cid = 1000
    for t in tnames:
        cid += 1
        latest[t] = stats(rng, cid, devices)
    for i in range(groups):
        t = tnames[i % tenants]
        path = f"{t}/g{i:06d}"
        cid += 1
        latest[path] = stats(rng, cid, devices)
        tenant, _, name = path.partition("/")
        samples[path] = GroupSample(
            node=node, tenant=tenant, group=name, cgroup_id=cid, wall=wall, monotonic=1.0,
            storage_bytes=rng.randrange(0, 1 << 40) if i % 4 == 0 else None)
        limits[path] = Limits(memory_max=rng.choice((MAX, 1 << 30)), memory_high=MAX,
                              memory_low=rng.randrange(0, 1 << 28), memory_min=0,
                              memory_swap_max=0, pids_max=rng.choice((MAX, 512)))
    costs = {(t, "EUR"): Decimal(rng.randrange(0, 10**8)) / 100 for t in tnames}
    costs[(tnames[0], "USD")] = Decimal("12.3456")
    health = Health(pass_duration=0.0421, last_success=1_700_000_000.125,
                    groups_sampled=len(latest),
                    placements={"moved": 1234, "excluded": 5, "gone": 17},
                    reloads={"ok": 3, "unchanged": 40, "invalid": 1},
                    drift={"memory.max": 2, "cpu.weight": 1}, enforce_write_errors=0,
                    policy_failed_writes=0, database_up=True,
                    db_write_errors=4, spool_depth=0, spool_write_errors={"ENOSPC": 2},
                    alerts={"ok": 2, "failed": 1},
                    sample_errors={"parse": 2, "read": 1},
                    pass_cpu={"read": 12.375, "store": 4.0625, "meter": 1.5, "other": 0.25},
                    job_cpu={"reconcile": 2.5, "placement-rescan": 0.125, "costs": 0.0625},
                    exporter_dropped={"over_limit": 3, "timeout": 1},
                    storage_full={"acme/web": 1, "acme/batch": 0})
    # the cpuset controller's read-back lists (Sampler.effective): every group, one in
    # three restricted to CPU 1, and one whose list is not a list (no series for it)
    effective = {p: {"cpus": "1" if i % 3 == 0 else "0-3", "mems": "0"}
                 for i, p in enumerate(sorted(latest))}
    effective[sorted(latest)[-1]] = {"cpus": "garbage"}
    return Snapshot(node=node, groups=latest, samples=samples, limits=limits, costs=costs,
                    pressure_warnings={f"{tnames[0]}/g000000": 3}, health=health,
                    effective=effective)


def parsed_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus-client's own parser:
    ``(name, sorted labels) -> value``.  Raises ValueError on a duplicate series."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            if key in out:
                raise ValueError(f"duplicate series {key}")
            out[key] = s.value
    return out


def family_types(text: str) -> dict[str, str]:
    """Family name -> type, as prometheus-client's parser reads the TYPE lines."""
    from prometheus_client.parser import text_string_to_metric_families

    return {fam.name: fam.type for fam in text_string_to_metric_families(text)}
