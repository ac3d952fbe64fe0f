"""``governor doctor``: can this host be governed, and if not, exactly why and how to fix it.

Read-only: doctor never creates, writes or removes anything (it checks permissions with
access(2) and inspects what exists).
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from governor.cgroupfs import mount
from governor.cgroupfs.files import CGROUP2_SUPER_MAGIC, statfs_type
from governor.cgroupfs.managed import MANAGED_CONTROLLERS
from governor.cgroupfs.parse import parse_list
from governor.config import Config
from governor.errors import GovernorError


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True
    #: informational: never a failure; ``fix`` is shown as a hint
    info: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _cgroup_root(cfg: Config, mountinfo: str) -> tuple[Check, Path | None]:
    if cfg.cgroup_root:
        root = Path(cfg.cgroup_root)
        try:
            ftype = statfs_type(root)
        except OSError as e:
            return Check("cgroup2 mount", False, f"{root}: {e.strerror}",
                         "point --cgroup-root at a cgroup2 mount"), None
        if ftype != CGROUP2_SUPER_MAGIC:
            return Check("cgroup2 mount", False,
                         f"{root} is not cgroup2 (statfs f_type {ftype:#x})",
                         "point --cgroup-root at a cgroup2 mount"), None
        return Check("cgroup2 mount", True, f"{root} (from configuration)"), root
    h = mount.inspect(mountinfo)
    why = mount.explain_hierarchy(h)
    if why:
        detail, _, fix = why.partition(". Fix: ")
        return Check("cgroup2 mount", False, detail, fix), None
    assert h.cgroup2 is not None
    root = Path(h.cgroup2.mount_point)
    if statfs_type(root) != CGROUP2_SUPER_MAGIC:
        return Check("cgroup2 mount", False, f"{root} fails the statfs check"), None
    return Check("cgroup2 mount", True,
                 f"{root} (controllers: {' '.join(h.cgroup2_controllers)})"), root


def _subtree_checks(cfg: Config, root: Path) -> list[Check]:
    out: list[Check] = []
    sub = root.joinpath(*cfg.subtree_parts)
    parent = sub.parent
    # the controllers the subtree can get: what its parent offers
    try:
        offered = set(parse_list((parent / "cgroup.controllers").read_text()))
    except OSError as e:
        return [Check("controllers", False, f"{parent}/cgroup.controllers: {e.strerror}")]
    missing = [c for c in MANAGED_CONTROLLERS if c not in offered]
    out.append(Check(
        "controllers available", not missing,
        f"{parent} offers {' '.join(sorted(offered)) or 'none'}"
        + (f"; missing {', '.join(missing)}" if missing else ""),
        "enable them in the parent's ancestors (cgroup.subtree_control), or run under a "
        "systemd unit with Delegate=yes" if missing else ""))
    if sub.is_dir():
        enabled = set(parse_list((sub / "cgroup.controllers").read_text()))
        lacking = [c for c in MANAGED_CONTROLLERS if c not in enabled]
        out.append(Check("subtree", True,
                         f"{sub} exists; controllers enabled for it: "
                         f"{' '.join(sorted(enabled)) or 'none'}"
                         + (f" (governor will enable {', '.join(lacking)})" if lacking else ""),
                         required=True))
        targets = [sub / "cgroup.procs", sub / "cgroup.subtree_control", sub]
    else:
        out.append(Check("subtree", True, f"{sub} does not exist yet; governor creates it",
                         required=False))
        targets = [parent, parent / "cgroup.subtree_control"]
    denied = [str(t) for t in targets if not os.access(t, os.W_OK)]
    out.append(Check(
        "write permission", not denied,
        "governor can write " + ", ".join(str(t) for t in targets) if not denied
        else "no write permission on " + ", ".join(denied),
        "" if not denied else "run as root, or delegate the subtree (systemd Delegate=yes, "
                              "or chown the group directory and its cgroup.procs, "
                              "cgroup.subtree_control and cgroup.threads to this user)"))
    return out


def _database_check(cfg: Config) -> Check:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(cfg.database_url)
    except (ArgumentError, ValueError):
        # never the URL itself: it may hold a password
        shown = re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", cfg.database_url)
        return Check("database", False, f"{shown!r} is no database URL",
                     "use sqlite:////var/lib/governor/governor.db or "
                     "postgresql+psycopg://user@host/db")
    if url.get_backend_name() == "sqlite":
        db = url.database or ""
        if not db or db == ":memory:":
            return Check("database", False, "an in-memory SQLite database loses every number",
                         "give a file path")
        d = Path(db).parent
        while not d.exists() and d != d.parent:
            d = d.parent
        ok = os.access(d, os.W_OK)
        return Check("database", ok, f"SQLite file {db} (directory {d} "
                     f"{'writable' if ok else 'not writable'})",
                     "" if ok else f"make {d} writable or choose another path")
    try:
        from sqlalchemy import create_engine, text

        eng = create_engine(url, connect_args={"connect_timeout": 3}
                            if url.get_backend_name() == "postgresql" else {})
        with eng.connect() as c:
            version = c.execute(text("select version()")).scalar()
        eng.dispose()
        return Check("database", True, f"{url.render_as_string(hide_password=True)}: "
                                       f"{str(version)[:40]}")
    except Exception as e:
        return Check("database", False,
                     f"{url.render_as_string(hide_password=True)}: {str(e).splitlines()[0]}",
                     "start the server, or check the URL and credentials")


def _policy_check(cfg: Config) -> tuple[Check, int | None]:
    """The policy check, and the number of placement rules (None: unknown)."""
    p = Path(cfg.policy)
    if not p.exists():
        return Check("policy", False, f"{p} does not exist",
                     "write a policy (see examples/policy.d) or pass --policy PATH"), None
    try:
        from governor.policy import load_policy
    except ImportError:
        return Check("policy", True, f"{p} exists (validation not available)"), None
    try:
        pol = load_policy([p])
    except GovernorError as e:
        first = str(e).splitlines()[:3]
        return Check("policy", False, f"{p}: " + "; ".join(first),
                     f"run `governor policy check {p}` for every error"), None
    ngroups = sum(len(t.groups) for t in pol.tenants.values())
    rules = sum(len(g.match) for g in pol.groups())
    return Check("policy", True, f"{p}: {len(pol.tenants)} tenants, {ngroups} groups"), rules


def _favordynmods_check(cfg: Config, root: Path, mountinfo: str, rules: int | None,
                        release: str | None = None) -> Check:
    """Whether the cgroup2 mount has ``favordynmods`` (read-only: never remounts).
    Informational: without it placement works, each move just waits longer."""
    name = "favordynmods"
    try:
        entry = mount.cgroup2_mount_of(root, mountinfo)
    except (GovernorError, OSError) as e:
        return Check(name, True, f"cannot tell: {e}", required=False, info=True)
    mp = entry.mount_point
    if mount.FAVORDYNMODS in entry.super_options:
        return Check(name, True, f"{mp} has it: a move into a group does not wait for an RCU "
                                 "grace period", required=False)
    release = platform.release() if release is None else release
    version = mount.kernel_version(release)
    too_old = version is not None and version < mount.FAVORDYNMODS_SINCE
    if cfg.favordynmods:
        if too_old:
            return Check(name, False, f"{mp} lacks it and this kernel ({release}) predates it "
                                      "(Linux 6.0+): `governor run` will log an error and "
                                      "place without it",
                         "set [placement] favordynmods = false, or run Linux 6.0+",
                         required=False)
        return Check(name, True, f"{mp} lacks it now; `governor run` turns it on at start "
                                 "([placement] favordynmods = true; needs root)",
                     required=False, info=True)
    if rules == 0:
        return Check(name, True, f"{mp} is mounted without it (the policy has no placement "
                                 "rules: nothing to speed up)", required=False, info=True)
    detail = (f"{mp} is mounted without it: a move into a group (placement, "
              "`governor launch`) after a quiet spell waits for an RCU grace period (16 ms "
              "measured on Linux 6.1)")
    rate = cfg.keep_warm_min_rate
    detail += ((f"; [placement] keep_warm spares the moves within {cfg.keep_warm:g} s of "
                "another" + (f" while at least {rate} come within a second (keep_warm_min_rate)"
                             if rate > 1 else ""))
               if cfg.keep_warm > 0 else
               "; with [placement] keep_warm = 0 every move waits")
    if too_old:
        return Check(name, True, detail + f"; this kernel ({release}) predates the option "
                                          "(Linux 6.0+)", required=False, info=True)
    return Check(name, True, detail,
                 "`[placement] favordynmods = true` (Linux 6.0+) cuts that wait (0.8 ms per "
                 "move measured), at a small cost to fork and exit host-wide",
                 required=False, info=True)


def _connector_check(cfg: Config) -> Check:
    """Read-only probe of the netlink process connector (opens and binds a socket, never
    subscribes): without it placement still works, by rescans alone."""
    from governor.placement.netlink import probe

    ok, detail = probe()
    every = f"{cfg.rescan_interval:g}s"
    if ok:
        return Check("process connector", True,
                     f"{detail}: placement is event-driven (within milliseconds), with a "
                     f"rescan every {every}", required=False)
    return Check("process connector", False,
                 f"{detail}: placement falls back to rescanning /proc every {every}, so a new "
                 "process may run up to that long outside its group",
                 "run the daemon as root in the initial pid namespace, on a kernel with "
                 "CONFIG_PROC_EVENTS; or shorten [placement] rescan_interval",
                 required=False)


def _accelerator_check() -> Check:
    """The optional C extensions (stat-file reads, samples, meter, exporter, store rows, the
    process connector's datagrams, procfs reads,
    keep_warm's writer): in use, or why not."""
    import os

    from governor.cgroupfs import keepwarm, reader
    from governor.exporter import families
    from governor.metering import tosample, usage
    from governor.placement import netlink, procfs
    from governor.store import bulk

    parts = (("governor.cgroupfs._fastread", reader.ACCELERATED),
             ("governor.metering._fastsample", tosample.C_TO_SAMPLE is not None),
             ("governor.metering._fastmeter", usage._FAST is not None),
             ("governor.exporter._fastrender", families.ACCELERATED is not None),
             ("governor.store._fastrows", bulk.sample_rows is not bulk._sample_rows_py),
             ("governor.placement._fastnetlink", netlink._c is not None),
             ("governor.placement._fastproc", procfs.ACCELERATED),
             ("governor.cgroupfs._keepwarm", keepwarm._warm is not None))
    if all(used for _, used in parts):
        return Check("C accelerators", True,
                     "in use: " + ", ".join(name for name, _ in parts), required=False)
    off = [name for name, used in parts if not used]
    why = ("GOVERNOR_PURE_PYTHON=1 is set" if os.environ.get("GOVERNOR_PURE_PYTHON") == "1"
           else f"not built: {', '.join(off)}")
    return Check("C accelerators", False,
                 f"{why}: their pure-Python twins run instead (same values, more CPU per "
                 "sampling pass and per scrape)",
                 "reinstall with a C compiler and the Python headers (apt-get install gcc "
                 "python3-dev; pip install -e .)", required=False)


def _writable_check(cfg: Config) -> Check:
    """Whether containers from images can have metered, limited writable layers here."""
    from governor.image.writable import Pool

    pool = Pool.from_config(cfg)
    name = "writable layers"
    if pool.ready():
        return Check(name, True, f"{pool.containers} has project quotas on: each group's "
                     "containers' writes are metered and limited by storage.max",
                     required=False)
    if cfg.image_pool_size is not None:
        have = "exists and is mounted by the next launch" if os.path.exists(
            pool.image_file) else "is made by the first launch --image"
        return Check(name, True, f"{pool.containers} has no project quotas; the pool "
                     f"{pool.image_file} ({cfg.image_pool_size} bytes, sparse) {have}",
                     required=False)
    return Check(name, False, f"{pool.containers} has no project quotas and [images] "
                 "pool_size is unset: launch --image refuses (a writable layer must be "
                 "metered)", "set [images] pool_size, or put containers/ on XFS (prjquota) "
                 "or ext4 (-O quota,project; prjquota)", required=False)


def _launcher_check(cfg: Config) -> Check:
    """Whether ``governor-launch`` is built and a launcher serves its socket (optional:
    ``governor launch`` works without either)."""
    import socket

    from governor.placement.launcher import client_path

    name, path = "launcher", cfg.launcher_socket
    client = client_path()
    if not client.is_file():
        return Check(name, False, f"{client} is not built (no C compiler at install): "
                     "governor-launch is missing; governor launch works without it",
                     "install a C compiler and reinstall governor", required=False)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError as e:
            return Check(name, True, f"{client} is built; no launcher serves {path} "
                         f"({e.strerror}): governor-launch needs one, governor launch does "
                         "not", "systemctl enable --now governor-launcher (fast launches)",
                         required=False, info=True)
    return Check(name, True, f"{client} is built; a launcher serves {path}",
                 required=False)


def _driver_checks(cfg: Config, root: Path | None, run_dir: str) -> list[Check]:
    """Which cgroup driver is in use and why; with systemd, whether its bus answers; with
    cgroupfs on a systemd host, whether the subtree is delegated."""
    from governor import driver

    name, why = driver.choose(cfg, run_dir=run_dir)
    out = [Check("cgroup driver", True, f"{name}: {why}", info=True,
                 fix="set [governor] cgroup_driver = \"systemd\" or \"cgroupfs\" to choose")]
    try:
        layout = driver.layout_for(cfg, run_dir=run_dir)
    except GovernorError as e:
        return [*out, Check("cgroup driver", False, str(e))]
    if name == "systemd":
        from governor.systemd.bus import Systemd

        try:
            with Systemd(timeout=5.0) as bus:
                version = bus.version()
        except GovernorError as e:
            return [*out, Check("systemd", False, str(e),
                                "is dbus running? (systemctl status dbus.socket); or set "
                                "cgroup_driver = \"cgroupfs\" for a delegated subtree")]
        out.append(Check("systemd", version >= 244,
                         f"systemd {version} over D-Bus; tenants are slices below "
                         f"{layout.subtree}, processes live in scopes",
                         "" if version >= 244 else "systemd 244 or later is needed"))
    elif driver.sd_booted(run_dir) and root is not None:
        from governor.cgroupfs.files import CgroupFS

        with CgroupFS(root) as fs:
            where = driver.delegated(fs, cfg.subtree)
        out.append(Check("delegation", where is not None,
                         f"the subtree lies in the delegated /{where}" if where else
                         f"{cfg.subtree} is outside every unit systemd delegated",
                         "" if where else
                         "set cgroup_driver = \"systemd\" (the default on a systemd host)"))
    return out


def run_checks(cfg: Config, *, mountinfo: str = "/proc/self/mountinfo",
               run_dir: str = "/run/systemd/system") -> list[Check]:
    checks: list[Check] = []
    c, root = _cgroup_root(cfg, mountinfo)
    checks.append(c)
    checks.extend(_driver_checks(cfg, root, run_dir))
    if root is not None:
        checks.extend(_subtree_checks(cfg, root))
    checks.append(Check("running as root", os.geteuid() == 0,
                        f"euid {os.geteuid()}",
                        "" if os.geteuid() == 0 else
                        "fine for a delegated subtree; root is needed for oom_score_adj and "
                        "the process connector", required=False))
    checks.append(_connector_check(cfg))
    checks.append(_accelerator_check())
    checks.append(_writable_check(cfg))
    checks.append(_launcher_check(cfg))
    checks.append(_database_check(cfg))
    policy, rules = _policy_check(cfg)
    checks.append(policy)
    if root is not None:
        checks.append(_favordynmods_check(cfg, root, mountinfo, rules))
    if root is None:
        checks.append(Check("sandbox", True,
                            "meanwhile `governor sandbox setup` then `governor sandbox exec -- "
                            "governor doctor` runs governor in a VM with a real cgroup v2 "
                            "kernel", required=False))
    return checks


def render(results: list[Check], echo: Callable[[str], None] | None = None) -> None:
    import click

    out = echo or click.echo
    for r in results:
        mark = "INFO" if r.info else "OK  " if r.ok else ("FAIL" if r.required else "WARN")
        out(f"[{mark}] {r.name}: {r.detail}")
        if r.fix and r.info:
            out(f"       hint: {r.fix}")
        elif r.fix and not r.ok:
            out(f"       fix: {r.fix}")
        elif r.fix and r.name == "sandbox":
            out(f"       {r.fix}")
    bad = [r for r in results if not r.ok and r.required]
    out("doctor: " + ("all checks passed" if not bad else
                      f"{len(bad)} check(s) failed: {', '.join(r.name for r in bad)}"))
