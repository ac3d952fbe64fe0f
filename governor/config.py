"""The daemon's configuration: ``config.toml``, ``GOVERNOR_*`` environment variables and
command-line overrides, in increasing order of precedence.

Every setting has a default (``config.example.toml`` documents them all); an unknown key,
a wrong type or a bad value is a :class:`~governor.errors.ConfigError` naming the file, the
key and the value, with a suggestion for typos.
"""

from __future__ import annotations

import difflib
import math
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from governor.cgroupfs.names import check_name
from governor.errors import ConfigError, InvalidName

DEFAULT_CONFIG = "/etc/governor/config.toml"

#: left alone by rules that name no cgroup: PID 1's scope, system services, login sessions,
#: virtual machines and the kubelet's pods; container runtimes' scopes stay candidates
#: (docker, podman, containerd, CRI-O), placed by their pid namespace (docs/placement.md)
RUNTIME_SCOPES: tuple[str, ...] = ("docker-*.scope", "libpod-*.scope",
                                   "cri-containerd-*.scope", "crio-*.scope")
DEFAULT_EXCLUDE: tuple[str, ...] = (
    "/init.scope", "/system.slice/*", "/user.slice/*", "/machine.slice/*",
    *(f"!*/{s}{tail}" for s in RUNTIME_SCOPES for tail in ("", "/*")),
    "/kubepods.slice/*", "/kubepods/*")

#: [placement] keep_warm_min_rate: keep_warm's window opens only when at least this many
#: moves were made within the last second (issue #16: below it the no-op writes cost more
#: per move than cgrulesengd's whole move; bench/README.md, docs/placement.md)
KEEP_WARM_MIN_RATE = 20


#: the longest duration a setting may have (100 years): found by trying, `interval = 1e308`
#: passed the check and overflowed timedelta when the scheduler started
DURATION_MAX = 100 * 365.25 * 86400


def parse_duration(value: object, *, key: str, file: str | None) -> float:
    """``10s``, ``500ms``, ``2m``, ``1h`` or a number of seconds -> seconds (> 0)."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    if isinstance(value, bool):
        raise ConfigError(f"{value!r} is not a duration; use e.g. \"10s\", \"500ms\", \"2m\"",
                          file=file, key=key)
    if isinstance(value, int | float):
        try:
            secs = float(value)
        except OverflowError:  # an int past a float's range
            secs = math.inf
    elif isinstance(value, str):
        s = value.strip()
        num, unit = s, "s"
        for u in ("ms", "s", "m", "h", "d"):
            if s.endswith(u) and s[: -len(u)].strip():
                num, unit = s[: -len(u)].strip(), u
                break
        try:
            secs = float(num) * units[unit]
        except ValueError:
            raise ConfigError(f"{value!r} is not a duration; use e.g. \"10s\", \"500ms\", "
                              "\"2m\", \"1h\"", file=file, key=key) from None
    else:
        raise ConfigError(f"{value!r} is not a duration", file=file, key=key)
    if not secs > 0:
        raise ConfigError(f"{value!r}: a duration must be positive", file=file, key=key)
    if not math.isfinite(secs):
        raise ConfigError(f"{str(value)[:40]!r}: a duration must be finite", file=file,
                          key=key)
    if secs > DURATION_MAX:  # timedelta and the scheduler overflow long before a float does
        raise ConfigError(f"{str(value)[:40]!r}: a duration is at most 100 years "
                          f"({DURATION_MAX:.0f} s)", file=file, key=key)
    return secs


def _listen(value: object, *, key: str, file: str | None) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{value!r} is not HOST:PORT (e.g. \"127.0.0.1:9717\")",
                          file=file, key=key)
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{value!r}: port must be 1..65535", file=file, key=key)
    if not host:
        raise ConfigError(f"{value!r}: give a host; \"127.0.0.1\" keeps it on loopback",
                          file=file, key=key)
    return value


@dataclass
class Config:
    """Resolved settings (after file, environment and overrides)."""

    source: str | None = None
    # [governor]
    node: str = field(default_factory=socket.gethostname)
    cgroup_root: str | None = None          # None: discover the cgroup2 mount
    subtree: str = "governor.slice"         # relative path under the cgroup root
    policy: str = "/etc/governor/policy.d"  # a file or a drop-in directory
    state_dir: str = "/var/lib/governor"
    log_format: str = "keyvalue"            # keyvalue | json
    log_level: str = "info"
    self_cgroup: str = "governor-daemon"    # the daemon's own group, relative to the mount
    cgroup_driver: str | None = None        # systemd | cgroupfs; None: systemd if PID 1 is
    self_memory_min: int = 64 * 1024 * 1024
    self_cpu_weight: int = 500
    # [database]
    database_url: str = "sqlite:////var/lib/governor/governor.db"
    spool_max_samples: int = 1_000_000
    retention_raw: float = 14 * 86400.0
    # [sampling]
    sample_interval: float = 10.0
    slow_every: int = 6                     # memory.stat every Nth pass
    write_every: int = 6                    # usage rows, rollups, anchors every Nth pass
    # [enforce]
    reconcile_interval: float = 30.0
    iocost_devices: tuple[str, ...] = ()
    # [placement]
    rescan_interval: float = 30.0
    exclude_cgroups: tuple[str, ...] = DEFAULT_EXCLUDE
    favordynmods: bool = False              # remount cgroup2 with favordynmods at start
    listener_nice: int = -10                # nice of the connector listener thread
    keep_warm: float = 1.0                  # keep moves fast this long after one (0: off)
    keep_warm_interval: float = 0.004       # no-op migration interval meanwhile
    keep_warm_min_rate: int = KEEP_WARM_MIN_RATE  # moves within a second that open it
    # [exporter]
    listen: str = "127.0.0.1:9717"
    tls_cert: str | None = None
    tls_key: str | None = None
    basic_auth_user: str | None = None
    basic_auth_password_sha256: str | None = None  # deprecated: web_config_file
    web_config_file: str | None = None      # Prometheus web config: TLS, bcrypt users
    exporter_request_timeout: float = 10.0  # TLS handshake, and each request, at most
    exporter_max_connections: int = 64      # served at once; more are refused at once
    # [oom]
    oom_webhook_url: str | None = None      # alert action target; None: alerts only logged
    oom_webhook_timeout: float = 5.0
    oom_webhook_retries: int = 3
    # [images]
    #: a loop-mounted ext4 pool of this size for containers' writable layers when the
    #: state directory has no project quotas (governor.image.writable); None: none
    image_pool_size: int | None = None
    image_project_base: int = 0x4F560000    # first project id of the groups' writable layers
    # (the defaults of governor.image.limits.ImportLimits)
    image_max_layer_size: int = 16 << 30    # bytes one layer may uncompress to
    image_max_layer_entries: int = 1_000_000
    image_min_free_space: int = 1 << 30     # what an import leaves free on state_dir's fs
    # [launcher]
    #: the unix socket `governor launcher` serves and `governor-launch` connects to
    launcher_socket: str = "/run/governor/launch.sock"

    @property
    def subtree_parts(self) -> list[str]:
        return [p for p in self.subtree.split("/") if p]


# section -> key -> (attribute, converter); the converter gets (value, key, file)
_Conv = Any


def _str(v: object, *, key: str, file: str | None) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"{v!r} is not a string", file=file, key=key)
    return v


def _bool(v: object, *, key: str, file: str | None) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{v!r} is not a boolean; use true or false", file=file, key=key)
    return v


def _opt_str(v: object, *, key: str, file: str | None) -> str | None:
    s = _str(v, key=key, file=file)
    return s or None


def _socket_path(v: object, *, key: str, file: str | None) -> str:
    """An absolute path a unix socket can be bound at (sun_path: 107 bytes)."""
    s = _str(v, key=key, file=file)
    if not s.startswith("/") or "\0" in s or len(s.encode()) > 107:
        raise ConfigError(f"{s!r} is not an absolute path of at most 107 bytes (a unix "
                          "socket's)", file=file, key=key)
    return s


def _choice(*choices: str) -> _Conv:
    def conv(v: object, *, key: str, file: str | None) -> str:
        if v not in choices:
            raise ConfigError(f"{v!r} is not one of {', '.join(choices)}", file=file, key=key)
        return str(v)
    return conv


def _pos_int(v: object, *, key: str, file: str | None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{v!r} is not a positive integer", file=file, key=key)
    return v


def _webhook(v: object, *, key: str, file: str | None) -> str | None:
    s = _opt_str(v, key=key, file=file)
    if s is not None and not s.startswith(("http://", "https://")):
        raise ConfigError(f"{s!r}: the webhook URL must start with http:// or https://",
                          file=file, key=key)
    return s


def _count(v: object, *, key: str, file: str | None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 100:
        raise ConfigError(f"{v!r} is not an integer from 0 to 100", file=file, key=key)
    return v


def _nice(v: object, *, key: str, file: str | None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not -20 <= v <= 19:
        raise ConfigError(f"{v!r} is not a nice value from -20 (first) to 19 (last); 0 is "
                          "the default of other processes", file=file, key=key)
    return v


def _keep_warm(v: object, *, key: str, file: str | None) -> float:
    if v in (0, "0", "0s", "0ms") and not isinstance(v, bool):
        return 0.0
    secs = parse_duration(v, key=key, file=file)
    if secs > 60:
        raise ConfigError(f"{v!r}: at most \"60s\" (moves are kept fast this long after the "
                          "last one; 0 turns it off)", file=file, key=key)
    return secs


def _keep_warm_interval(v: object, *, key: str, file: str | None) -> float:
    secs = parse_duration(v, key=key, file=file)
    if not 0.0005 <= secs <= 0.1:
        raise ConfigError(f"{v!r}: use \"0.5ms\" to \"100ms\", shorter than an RCU grace "
                          "period (a few milliseconds; \"4ms\" is the default)",
                          file=file, key=key)
    return secs


def _keep_warm_min_rate(v: object, *, key: str, file: str | None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 100_000:
        raise ConfigError(f"{v!r} is not a whole number of moves a second from 0 to 100000 "
                          "(keep_warm's window opens when this many moves were made within "
                          f"the last second; 0: after every move; default {KEEP_WARM_MIN_RATE})",
                          file=file, key=key)
    return v


def _subtree(v: object, *, key: str, file: str | None) -> str:
    s = _str(v, key=key, file=file).strip("/")
    if not s:
        raise ConfigError("the subtree must not be the cgroup root itself; "
                          "use e.g. \"governor.slice\"", file=file, key=key)
    for part in s.split("/"):
        try:
            check_name(part, what="subtree")
        except InvalidName as e:
            raise ConfigError(f"{v!r}: {e.reason}", file=file, key=key) from None
    return s


def _size(v: object, *, key: str, file: str | None) -> int:
    from governor.policy.units import MAX, UnitError, parse_size

    try:
        size = parse_size(v, allow_max=False)
    except UnitError as e:
        raise ConfigError(f"{v!r}: {e}", file=file, key=key) from None
    if size is MAX or not isinstance(size, int):
        raise ConfigError(f"{v!r}: give a size such as \"64M\"", file=file, key=key)
    return size


def _pos_size(v: object, *, key: str, file: str | None) -> int:
    size = _size(v, key=key, file=file)
    if size < 1:
        raise ConfigError(f"{v!r}: give a size of at least 1 byte, such as \"16G\"",
                          file=file, key=key)
    return size


def _weight(v: object, *, key: str, file: str | None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10000:
        raise ConfigError(f"{v!r} is not a weight 1..10000", file=file, key=key)
    return v


def _str_list(v: object, *, key: str, file: str | None) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{v!r} is not a list of strings", file=file, key=key)
    return tuple(v)


def _cgroup_globs(v: object, *, key: str, file: str | None) -> tuple[str, ...]:
    globs = _str_list(v, key=key, file=file)
    for g in globs:
        if not g.removeprefix("!").startswith(("/", "*")):
            raise ConfigError(f"{g!r}: a cgroup glob is an absolute cgroup path as in "
                              "/proc/PID/cgroup, e.g. \"/system.slice/*\" (or an exception "
                              "to the globs before it: \"!*/docker-*.scope*\")",
                              file=file, key=key)
    return globs


def _duration(v: object, *, key: str, file: str | None) -> float:
    return parse_duration(v, key=key, file=file)


#: the URL schemes of the database drivers governor installs (SQLite from Python, psycopg 3)
DB_SCHEMES = frozenset({"sqlite", "sqlite+pysqlite", "postgresql", "postgres",
                        "postgresql+psycopg"})


def _write_every(v: object, *, key: str, file: str | None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 360:
        raise ConfigError(f"{v!r}: give a number of passes from 1 to 360 (the raw samples "
                          "are written every pass; the usage rows derived from them every "
                          "this many)", file=file, key=key)
    return v


def _project_base(v: object, *, key: str, file: str | None) -> int:
    # a 32-bit project id, with room for 2**20 groups above it
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 2**32 - 1 - (1 << 20):
        raise ConfigError(f"{v!r}: give a project id from 1 to {2**32 - 1 - (1 << 20)} "
                          "(governor takes the ids from it upwards, one per group)",
                          file=file, key=key)
    return v


def _db_url(v: object, *, key: str, file: str | None) -> str:
    s = _str(v, key=key, file=file)
    scheme = s.split("://", 1)[0] if "://" in s else None
    if scheme not in DB_SCHEMES:
        from governor.log import mask_secrets

        raise ConfigError(f"{mask_secrets(s)!r}: use sqlite:////path/to/file.db or "
                          "postgresql+psycopg://user@host/dbname (the drivers governor "
                          f"ships: {', '.join(sorted(DB_SCHEMES))})", file=file, key=key)
    return s


SCHEMA: dict[str, dict[str, tuple[str, _Conv]]] = {
    "governor": {
        "node": ("node", _str),
        "cgroup_root": ("cgroup_root", _opt_str),
        "subtree": ("subtree", _subtree),
        "policy": ("policy", _str),
        "state_dir": ("state_dir", _str),
        "log_format": ("log_format", _choice("keyvalue", "json")),
        "log_level": ("log_level", _choice("debug", "info", "warning", "error")),
        "self_cgroup": ("self_cgroup", _subtree),
        "cgroup_driver": ("cgroup_driver", _choice("systemd", "cgroupfs")),
        "self_memory_min": ("self_memory_min", _size),
        "self_cpu_weight": ("self_cpu_weight", _weight),
    },
    "database": {
        "url": ("database_url", _db_url),
        "spool_max_samples": ("spool_max_samples", _pos_int),
        "retention_raw": ("retention_raw", _duration),
    },
    "sampling": {
        "interval": ("sample_interval", _duration),
        "slow_every": ("slow_every", _pos_int),
        "write_every": ("write_every", _write_every),
    },
    "enforce": {
        "reconcile_interval": ("reconcile_interval", _duration),
        "iocost_devices": ("iocost_devices", _str_list),
    },
    "placement": {
        "rescan_interval": ("rescan_interval", _duration),
        "exclude_cgroups": ("exclude_cgroups", _cgroup_globs),
        "favordynmods": ("favordynmods", _bool),
        "listener_nice": ("listener_nice", _nice),
        "keep_warm": ("keep_warm", _keep_warm),
        "keep_warm_interval": ("keep_warm_interval", _keep_warm_interval),
        "keep_warm_min_rate": ("keep_warm_min_rate", _keep_warm_min_rate),
    },
    "exporter": {
        "listen": ("listen", _listen),
        "tls_cert": ("tls_cert", _opt_str),
        "tls_key": ("tls_key", _opt_str),
        "basic_auth_user": ("basic_auth_user", _opt_str),
        "basic_auth_password_sha256": ("basic_auth_password_sha256", _opt_str),
        "web_config_file": ("web_config_file", _opt_str),
        "request_timeout": ("exporter_request_timeout", _duration),
        "max_connections": ("exporter_max_connections", _pos_int),
    },
    "oom": {
        "webhook_url": ("oom_webhook_url", _webhook),
        "webhook_timeout": ("oom_webhook_timeout", _duration),
        "webhook_retries": ("oom_webhook_retries", _count),
    },
    "images": {
        "max_layer_size": ("image_max_layer_size", _pos_size),
        "max_layer_entries": ("image_max_layer_entries", _pos_int),
        "min_free_space": ("image_min_free_space", _size),
        "pool_size": ("image_pool_size", _size),
        "project_base": ("image_project_base", _project_base),
    },
    "launcher": {
        "socket": ("launcher_socket", _socket_path),
    },
}

#: environment variables (GOVERNOR_<NAME>) and the setting each one overrides
ENV = {
    "GOVERNOR_POLICY": ("governor", "policy"),
    "GOVERNOR_DATABASE": ("database", "url"),
    "GOVERNOR_CGROUP_ROOT": ("governor", "cgroup_root"),
    "GOVERNOR_SUBTREE": ("governor", "subtree"),
    "GOVERNOR_CGROUP_DRIVER": ("governor", "cgroup_driver"),
    "GOVERNOR_NODE": ("governor", "node"),
    "GOVERNOR_LISTEN": ("exporter", "listen"),
    "GOVERNOR_SAMPLE_INTERVAL": ("sampling", "interval"),
}


def _apply(cfg: Config, section: str, key: str, value: object, file: str | None) -> None:
    attr, conv = SCHEMA[section][key]
    setattr(cfg, attr, conv(value, key=f"{section}.{key}", file=file))


def load_config(path: str | os.PathLike[str] | None = None, *,
                overrides: Mapping[str, object] | None = None,
                environ: Mapping[str, str] | None = None,
                missing_ok: bool | None = None) -> Config:
    """Load ``path`` (default ``/etc/governor/config.toml``), then ``GOVERNOR_*``
    variables, then ``overrides`` (``"section.key" -> value``, e.g. from the command line).

    A missing file is an error when it was named explicitly, and means "all defaults" when
    it is the default path (``missing_ok`` forces either behaviour).
    """
    env = os.environ if environ is None else environ
    explicit = path is not None
    p = Path(path if path is not None else DEFAULT_CONFIG)
    if missing_ok is None:
        missing_ok = not explicit
    cfg = Config()
    file = str(p)
    try:
        text = p.read_text()
    except FileNotFoundError:
        if not missing_ok:
            raise ConfigError("no such file; copy config.example.toml there or pass "
                              "--config FILE", file=file) from None
        text = None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file=file) from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=file) from e
    if text is not None:
        cfg.source = file
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"TOML syntax error: {e}", file=file) from e
        errors: list[str] = []
        for section, body in data.items():
            if section not in SCHEMA:
                errors.append(_unknown(file, section, list(SCHEMA)))
                continue
            if not isinstance(body, dict):
                errors.append(f"{file}: {section}: must be a table [{section}]")
                continue
            for key, value in body.items():
                if key not in SCHEMA[section]:
                    errors.append(_unknown(file, f"{section}.{key}",
                                           [f"{section}.{k}" for k in SCHEMA[section]]))
                    continue
                try:
                    _apply(cfg, section, key, value, file)
                except ConfigError as e:
                    errors.append(str(e))
        if errors:
            raise ConfigError("\n".join(errors))
    for var, (section, key) in ENV.items():
        if var in env and env[var] != "":
            _apply(cfg, section, key, env[var], f"${var}")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        _apply(cfg, section, key, value, "command line")
    return cfg


def _unknown(file: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(known)}"
    return f"{file}: {key}: unknown setting{hint}"
