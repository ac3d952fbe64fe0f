"""Validating a tenant's or group's limits: memory, CPU, IO (``io.max`` per device),
pids and the OOM settings (part of :mod:`governor.policy.loader`)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import cast

from governor.policy import units
from governor.policy.context import (
    IO_MAX_KEYS,
    OOM_ACTIONS,
    SIZE_KEYS,
    BadValue,
    Ctx,
    KeyPath,
    check_int,
    check_size,
    report_unknown,
)
from governor.policy.model import (
    RESTART_BACKOFF_CAP_US,
    IoMax,
    Limits,
    OomAction,
    OomSettings,
    PressureKey,
)
from governor.policy.units import MAX, Size, UnitError, show


def _io_max(ctx: Ctx, path: KeyPath, value: object) -> tuple[IoMax, ...]:
    if not isinstance(value, dict):
        ctx.add(path, value, f"{show(value)} is not a table of devices, e.g. "
                             "{ \"/dev/vda\" = { wbps = \"10M\" } }")
        return ()
    out: list[IoMax] = []
    seen: dict[tuple[int, int], str] = {}
    for device, spec in value.items():
        dpath = (*path, device)
        number = units.parse_device_number(device)
        if number is None:
            if not device.startswith("/"):
                ctx.add(dpath, device, f"device {show(device)} is neither a path like "
                                       "/dev/vda nor MAJ:MIN")
                continue
            try:
                number = ctx.resolver(device)
            except Exception as exc:  # any resolver failure is a problem, not a crash
                ctx.add(dpath, device, f"unknown device {show(device)}: {exc}")
                continue
        if number in seen:
            ctx.add(dpath, device, f"device {show(device)} is {number[0]}:{number[1]}, "
                                   f"already limited as {show(seen[number])}")
            continue
        seen[number] = device
        if not isinstance(spec, dict) or not spec:
            ctx.add(dpath, spec, "give a table with rbps, wbps, riops and/or wiops")
            continue
        limits: dict[str, int | None] = {}
        for key, raw in spec.items():
            kpath = (*dpath, key)
            if key not in IO_MAX_KEYS:
                report_unknown(ctx, dpath, key, raw, IO_MAX_KEYS)
                continue
            try:
                if key.endswith("bps"):
                    size = check_size(raw)
                    limit: int | None = None if size is MAX else size
                elif isinstance(raw, str) and raw.strip().lower() == "max":
                    limit = None
                else:
                    limit = check_int(raw, 0, 2**63 - 1, f"{key} (IO per second)", ' or "max"')
            except BadValue as exc:
                ctx.add(kpath, raw, str(exc))
                continue
            if limit == 0:
                ctx.add(kpath, raw, f"{key} = 0 would stop all IO; use at least 1, or "
                                    "\"max\" for no limit")
                continue
            limits[key] = limit
        out.append(IoMax(device, number[0], number[1], **limits))
    return tuple(out)


def parse_oom(ctx: Ctx, base: KeyPath, flat: Mapping[str, object]) -> OomSettings:
    actions: list[OomAction] = []
    pressure: dict[PressureKey, float] = {}
    if "oom.actions" in flat:
        raw = flat["oom.actions"]
        path = (*base, "oom.actions")
        if not isinstance(raw, list):
            ctx.add(path, raw, f"{show(raw)} is not a list; e.g. [\"log\", \"alert\"]")
        else:
            for i, item in enumerate(raw):
                if item not in OOM_ACTIONS:
                    close = difflib.get_close_matches(str(item), OOM_ACTIONS, n=1)
                    hint = f"; did you mean {close[0]}?" if close else ""
                    ctx.add((*path, i), item, f"{show(item)} is not an OOM action (log, "
                                              f"alert, restart){hint}")
                elif item in actions:
                    ctx.add((*path, i), item, f"{show(item)} is listed twice", "warning")
                else:
                    actions.append(cast(OomAction, item))
    if "oom.pressure" in flat:
        raw = flat["oom.pressure"]
        path = (*base, "oom.pressure")
        if not isinstance(raw, dict):
            ctx.add(path, raw, f"{show(raw)} is not a table; e.g. {{ some_avg10 = 20.0 }}")
        else:
            names = [k.value for k in PressureKey]
            for key, value in raw.items():
                if key not in names:
                    report_unknown(ctx, path, key, value, names)
                elif (isinstance(value, bool) or not isinstance(value, int | float)
                      or not 0 < value <= 100):
                    ctx.add((*path, key), value, f"{show(value)} is not a percentage "
                                                 "above 0 and at most 100")
                else:
                    pressure[PressureKey(key)] = float(value)
    restart_max = 3  # OomSettings.restart_max
    if "oom.restart_max" in flat:
        raw = flat["oom.restart_max"]
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 1000:
            ctx.add((*base, "oom.restart_max"), raw,
                    f"{show(raw)} is not a whole number of restarts from 0 to 1000")
        else:
            restart_max = raw
    restart_backoff_us = 1_000_000  # OomSettings.restart_backoff_us
    if "oom.restart_backoff" in flat:
        raw = flat["oom.restart_backoff"]
        path = (*base, "oom.restart_backoff")
        try:
            us = units.parse_duration_us(raw)
        except UnitError as e:
            ctx.add(path, raw, str(e))
        else:
            if not 0 < us <= RESTART_BACKOFF_CAP_US:
                ctx.add(path, raw, f"{show(raw)} is not a backoff above 0 and at most "
                                   "300s (it doubles after each restart, up to 300s)")
            else:
                restart_backoff_us = us
    if ("restart" not in actions
            and ("oom.restart_max" in flat or "oom.restart_backoff" in flat)):
        key = "oom.restart_max" if "oom.restart_max" in flat else "oom.restart_backoff"
        ctx.add((*base, key), flat[key], "has no effect: oom.actions does not list "
                                         "\"restart\"", "warning")
    group_kill = flat.get("oom.group_kill")
    return OomSettings(
        group_kill=group_kill if isinstance(group_kill, bool) else None,
        actions=tuple(actions),
        pressure=tuple(sorted(pressure.items())),
        restart_max=restart_max,
        restart_backoff_us=restart_backoff_us,
    )


def parse_limits(ctx: Ctx, base: KeyPath, flat: Mapping[str, object]) -> Limits:
    """Build :class:`Limits` from a flattened tenant/group table (unknown keys were
    reported by the caller)."""
    fields: dict[str, object] = {}

    def take(key: str, parse: Callable[[object], object]) -> object | None:
        if key not in flat:
            return None
        try:
            return parse(flat[key])
        except (BadValue, UnitError) as exc:
            ctx.add((*base, key), flat[key], str(exc))
            return None

    sizes: dict[str, Size] = {}
    for key in SIZE_KEYS:
        got = take(key, check_size)
        if got is not None:
            sizes[key] = cast(Size, got)
            fields[key.replace(".", "_")] = got

    weight = take("cpu.weight", lambda v: check_int(v, 1, 10_000, "cpu.weight"))
    shares = take("cpu.shares", lambda v: check_int(v, units.SHARES_MIN, units.SHARES_MAX,
                                                    "cpu.shares (cgroup v1/Docker)"))
    if "cpu.shares" in flat and "cpu.weight" in flat:
        ctx.add((*base, "cpu.shares"), flat["cpu.shares"],
                "cpu.shares and cpu.weight both set the CPU weight; keep one")
    elif shares is not None:
        weight = units.shares_to_weight(cast(int, shares))
    fields["cpu_weight"] = weight

    cpu_max = take("cpu.max", units.parse_cpu_max)
    cpus = take("cpus", units.cores_to_cpu_max)
    if "cpus" in flat and "cpu.max" in flat:
        ctx.add((*base, "cpus"), flat["cpus"],
                "cpus and cpu.max both set the CPU limit; keep one")
    elif cpus is not None:
        cpu_max = cpus
    fields["cpu_max"] = cpu_max

    burst = take("cpu.max.burst", units.parse_duration_us)
    if isinstance(burst, int) and burst > units.MAX_QUOTA_US:
        ctx.add((*base, "cpu.max.burst"), flat["cpu.max.burst"],
                "cpu.max.burst is above the kernel's limit of 2^44-1 us")
        burst = None
    if (isinstance(burst, int) and isinstance(cpu_max, units.CpuMax)
            and cpu_max.quota_us is not None and burst > cpu_max.quota_us):
        ctx.add((*base, "cpu.max.burst"), flat["cpu.max.burst"],
                f"cpu.max.burst ({burst} us) is above the cpu.max quota "
                f"({cpu_max.quota_us} us); the kernel refuses that")
        burst = None
    fields["cpu_max_burst_us"] = burst

    io_weight = take("io.weight", lambda v: check_int(v, 1, 10_000, "io.weight"))
    blkio = take("io.blkio_weight", lambda v: check_int(
        v, units.BLKIO_MIN, units.BLKIO_MAX, "io.blkio_weight (Docker blkio-weight)"))
    if "io.blkio_weight" in flat and "io.weight" in flat:
        ctx.add((*base, "io.blkio_weight"), flat["io.blkio_weight"],
                "io.blkio_weight and io.weight both set the IO weight; keep one")
    elif blkio is not None:
        io_weight = units.blkio_weight_to_io_weight(cast(int, blkio))
    fields["io_weight"] = io_weight

    if "io.max" in flat:
        fields["io_max"] = _io_max(ctx, (*base, "io.max"), flat["io.max"])

    def pids(v: object) -> Size:
        if isinstance(v, str) and v.strip().lower() == "max":
            return MAX
        return check_int(v, 1, 2**31 - 1, "pids.max", ' or "max"')

    fields["pids_max"] = take("pids.max", pids)

    def flag(v: object) -> bool:
        if not isinstance(v, bool):
            raise BadValue(f"{show(v)} is not true or false")
        return v

    fields["memory_oom_group"] = take("oom.group_kill", flag)

    # a protection or throttle above the hard limit of the same group is a mistake
    hard = sizes.get("memory.max")
    if isinstance(hard, int):
        for key in ("memory.min", "memory.low", "memory.high"):
            value = sizes.get(key)
            if value is not None and (value is MAX or value > hard):
                ctx.add((*base, key), flat[key],
                        f"{key} ({units.format_size(value)}) is above memory.max "
                        f"({units.format_size(hard)}) of the same group")
    return Limits(**{k: v for k, v in fields.items() if v is not None})  # type: ignore[arg-type]
