"""governor.systemd.bus on the host: no systemd, no system bus.

The pure parts (error mapping, version parsing, sd_booted, message construction) are checked
directly.  The client itself is run against :class:`FakeSystemd`, an in-process D-Bus peer on
an AF_UNIX socket: it answers the SASL handshake, then parses each call with jeepney's own
``Parser`` and answers it like a tiny systemd (units, jobs and their JobRemoved signals), so
the real connection, retry, job-wait and error paths run.  Knobs on the fake inject the
failures: dropped connections, missing replies, missing signals, job results.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from jeepney import (
    DBusAddress,
    HeaderFields,
    Message,
    Parser,
    new_error,
    new_method_return,
    new_signal,
)

from governor.errors import GovernorError
from governor.systemd import bus
from governor.systemd.bus import (
    BusUnavailable,
    NoSuchUnit,
    Systemd,
    SystemdError,
    UnitExists,
    error_from_reply,
    parse_version,
    sd_booted,
)

MANAGER = DBusAddress(bus.MANAGER_PATH, interface=bus.MANAGER_IFACE)
UNIT_PREFIX = "/org/freedesktop/systemd1/unit/"


# ---- the fake systemd ----


@dataclass
class FakeSystemd:
    """A D-Bus peer that plays both the bus daemon (Hello, AddMatch) and systemd's Manager."""

    path: str
    version: str = "252.38-1~deb12u1"
    #: unit name -> ActiveState
    units: dict[str, str] = field(default_factory=dict)
    #: pid -> unit name
    pids: dict[int, str] = field(default_factory=dict)
    #: unit name -> result of its next jobs ("done" when absent)
    job_results: dict[str, str] = field(default_factory=dict)
    #: members whose next call closes the connection instead of answering (one-shot, counted)
    drop: dict[str, int] = field(default_factory=dict)
    #: members never answered
    silent: set[str] = field(default_factory=set)
    #: units ResetFailedUnit leaves in place
    sticky: set[str] = field(default_factory=set)
    #: units whose jobs never send JobRemoved
    no_signal: set[str] = field(default_factory=set)
    #: send JobRemoved before the method reply (a job faster than the reply)
    signal_first: bool = False
    #: every call received: (member, signature, body)
    calls: list[tuple[str, str | None, tuple[Any, ...]]] = field(default_factory=list)
    connections: int = 0
    _jobs: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(8)
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def close(self) -> None:
        self._listener.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def members(self) -> list[str]:
        return [m for m, _, _ in self.calls]

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._socks.append(conn)
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        try:
            rest = self._handshake(conn)
            parser = Parser()
            parser.add_data(rest)
            while True:
                msg = parser.get_next_message()
                if msg is None:
                    data = conn.recv(65536)
                    if not data:
                        return
                    parser.add_data(data)
                    continue
                if not self._answer(conn, msg):
                    conn.close()
                    return
        except OSError:
            return

    @staticmethod
    def _handshake(conn: socket.socket) -> bytes:
        """SASL: the client's NUL and AUTH line get OK, then everything after BEGIN is D-Bus."""
        buf = b""
        while b"\r\n" not in buf:
            buf += conn.recv(4096)
        assert buf.startswith(b"\0AUTH ")
        conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
        buf = buf.split(b"\r\n", 1)[1]
        while b"BEGIN\r\n" not in buf:
            data = conn.recv(4096)
            if not data:
                raise ConnectionResetError
            buf += data
        return buf.split(b"BEGIN\r\n", 1)[1]

    def _answer(self, conn: socket.socket, msg: Message) -> bool:
        fields = msg.header.fields
        member = fields[HeaderFields.member]
        with self._lock:
            self.calls.append((member, fields.get(HeaderFields.signature), tuple(msg.body)))
            if self.drop.get(member, 0) > 0:
                self.drop[member] -= 1
                return False
        if member in self.silent:
            return True
        replies = self._handle(member, msg)
        for reply in replies:
            conn.sendall(reply.serialise(serial=self._next_serial()))
        return True

    def _next_serial(self) -> int:
        with self._lock:
            self._jobs += 1
            return 1000 + self._jobs

    def _error(self, msg: Message, name: str, text: str) -> list[Message]:
        return [new_error(msg, name, "s", (text,))]

    def _job(self, msg: Message, unit: str, after: Callable[[], object]) -> list[Message]:
        with self._lock:
            self._jobs += 1
            n = self._jobs
        job = f"/org/freedesktop/systemd1/job/{n}"
        result = self.job_results.get(unit, "done")
        after()
        reply = new_method_return(msg, "o", (job,))
        # noise the client must skip: another unit's job, and an older job of this unit
        noise = [
            new_signal(MANAGER, "JobRemoved", "uoss", (n + 500, f"{job}0", "other.slice", "done")),
            new_signal(MANAGER, "JobRemoved", "uoss", (n - 1, f"{job}9", unit, "canceled")),
        ]
        if unit in self.no_signal:
            return [reply, *noise]
        signal = new_signal(MANAGER, "JobRemoved", "uoss", (n, job, unit, result))
        if self.signal_first:
            return [*noise, signal, reply]
        return [reply, *noise, signal]

    def _handle(self, member: str, msg: Message) -> list[Message]:
        body = msg.body
        ok = [new_method_return(msg)]
        if member == "Hello":
            return [new_method_return(msg, "s", (f":1.{self.connections}",))]
        if member in ("AddMatch", "RemoveMatch", "Subscribe"):
            return ok
        if member == "StartTransientUnit":
            name = body[0]
            if name in self.units:
                return self._error(
                    msg, bus.ERR_UNIT_EXISTS, f"Unit {name} was already loaded or has a fragment "
                    "file."
                )
            result = self.job_results.get(name, "done")

            def start() -> None:
                self.units[name] = "active" if result == "done" else "failed"

            return self._job(msg, name, start)
        if member == "StopUnit":
            name = body[0]
            if name not in self.units:
                return self._error(msg, bus.ERR_NO_SUCH_UNIT, f"Unit {name} not loaded.")
            return self._job(msg, name, lambda: self.units.pop(name))
        if member == "ResetFailedUnit":
            name = body[0]
            if name not in self.units:
                return self._error(msg, bus.ERR_NO_SUCH_UNIT, f"Unit {name} not loaded.")
            if self.units[name] in ("failed", "inactive") and name not in self.sticky:
                del self.units[name]
            return ok
        if member == "GetUnit":
            name = body[0]
            if name not in self.units:
                return self._error(msg, bus.ERR_NO_SUCH_UNIT, f"Unit {name} not loaded.")
            return [new_method_return(msg, "o", (UNIT_PREFIX + _escape(name),))]
        if member == "LoadUnit":
            return [new_method_return(msg, "o", (UNIT_PREFIX + _escape(body[0]),))]
        if member == "GetUnitByPID":
            unit = self.pids.get(body[0])
            if unit is None:
                return self._error(
                    msg, bus.ERR_NO_UNIT_FOR_PID, f"PID {body[0]} does not belong to any loaded "
                    "unit."
                )
            return [new_method_return(msg, "o", (UNIT_PREFIX + _escape(unit),))]
        if member == "AttachProcessesToUnit":
            unit, _sub, pids = body
            if unit not in self.units:
                return self._error(msg, bus.ERR_NO_SUCH_UNIT, f"Unit {unit} not loaded.")
            for pid in pids:
                self.pids[pid] = unit
            return ok
        if member == "SetUnitProperties":
            if body[0] not in self.units:
                return self._error(msg, bus.ERR_NO_SUCH_UNIT, f"Unit {body[0]} not loaded.")
            for prop, _value in body[2]:
                if prop == "Bogus":
                    return self._error(
                        msg, "org.freedesktop.DBus.Error.InvalidArgs", "Cannot set property Bogus"
                    )
            return ok
        if member == "Get":
            return self._get(msg)
        return self._error(msg, "org.freedesktop.DBus.Error.UnknownMethod", member)

    def _get(self, msg: Message) -> list[Message]:
        path = msg.header.fields[HeaderFields.path]
        iface, prop = msg.body
        if path == bus.MANAGER_PATH and prop == "Version":
            return [new_method_return(msg, "v", (("s", self.version),))]
        name = _unescape(path.removeprefix(UNIT_PREFIX))
        state = self.units.get(name, "inactive")
        values: dict[str, tuple[str, object]] = {
            "ActiveState": ("s", state),
            "Id": ("s", name),
            "LoadState": ("s", "loaded" if name in self.units else "not-found"),
        }
        if iface != bus.UNIT_IFACE:
            values["ControlGroup"] = ("s", "/a.slice/" + name if name in self.units else "")
            values["MemoryMax"] = ("t", 67108864)
        if prop not in values:
            return self._error(
                msg, "org.freedesktop.DBus.Error.UnknownProperty", f"Unknown property {prop}"
            )
        return [new_method_return(msg, "v", (values[prop],))]


def _escape(name: str) -> str:
    return "".join(c if c.isalnum() else f"_{ord(c):02x}" for c in name)


def _unescape(path: str) -> str:
    out, i = [], 0
    while i < len(path):
        if path[i] == "_":
            out.append(chr(int(path[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


@pytest.fixture
def sock_dir(tmp_path: Path) -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer
    if len(str(tmp_path)) < 90:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="sdbus") as d:
        yield Path(d)


@pytest.fixture
def fake(sock_dir: Path) -> Iterator[FakeSystemd]:
    f = FakeSystemd(str(sock_dir / "bus"))
    yield f
    f.close()


@pytest.fixture
def sd(fake: FakeSystemd) -> Iterator[Systemd]:
    with Systemd(fake.path, timeout=5.0) as client:
        yield client


# ---- pure parts ----


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ("252.38-1~deb12u1", 252),
        ("252", 252),
        ("v245.4-1.fc32", 245),
        ('"245-1.fc32"', 245),
        ("255.4-1ubuntu8", 255),
    ],
)
def test_parse_version(text: str, major: int) -> None:
    assert parse_version(text) == major


def test_parse_version_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="systemd version"):
        parse_version("unknown")


def test_sd_booted(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    assert sd_booted(str(tmp_path / "dir"))
    assert not sd_booted(str(tmp_path / "file"))
    assert not sd_booted(str(tmp_path / "link"))  # lstat, like sd_booted(3)
    assert not sd_booted(str(tmp_path / "missing"))


def test_error_mapping() -> None:
    e = error_from_reply(bus.ERR_UNIT_EXISTS, ("Unit x.scope already exists.",), "x.scope", "M")
    assert type(e) is UnitExists
    assert isinstance(e, SystemdError) and isinstance(e, GovernorError)
    assert (e.unit, e.method, e.name, e.detail) == (
        "x.scope",
        "M",
        bus.ERR_UNIT_EXISTS,
        "Unit x.scope already exists.",
    )
    assert "x.scope" in str(e) and "M" in str(e) and "already exists" in str(e)
    assert "systemctl stop x.scope" in str(e)

    e = error_from_reply(bus.ERR_NO_SUCH_UNIT, ("Unit y.slice not loaded.",), "y.slice", "GetUnit")
    assert type(e) is NoSuchUnit
    assert "systemctl status y.slice" in str(e)
    assert type(error_from_reply(bus.ERR_NO_UNIT_FOR_PID, ("PID 7 ...",), "pid 7", "G")) is (
        NoSuchUnit
    )

    e = error_from_reply("org.freedesktop.DBus.Error.AccessDenied", ("denied",), "z.slice", "S")
    assert type(e) is SystemdError and "run governor as root" in str(e)
    e = error_from_reply("org.example.Unknown", (), None, "Get Version")
    assert e.fix is None and e.detail == "org.example.Unknown" and e.unit is None
    assert str(e) == "systemd Get Version: org.example.Unknown [org.example.Unknown]"


def test_job_error_names_result_and_unit() -> None:
    e = bus.job_error("x.slice", "StartTransientUnit", "/job/7", "dependency")
    assert "x.slice" in str(e) and "'dependency'" in str(e) and "/job/7" in str(e)
    assert e.name is None and e.fix is not None


def test_bus_unavailable_message() -> None:
    e = BusUnavailable("/nowhere/bus", errno.ENOENT)
    assert e.socket_path == "/nowhere/bus" and e.errno == errno.ENOENT
    assert "/nowhere/bus" in str(e) and "ENOENT" in str(e)
    assert "is dbus running? (systemctl status dbus.socket)" in str(e)


def test_subcgroup() -> None:
    assert bus._subcgroup("") == ""
    assert bus._subcgroup("/") == ""
    assert bus._subcgroup("payload") == "/payload"
    assert bus._subcgroup("/a/b") == "/a/b"
    for bad in ("../x", "/a/../b", "a//b", "a/"):
        with pytest.raises(ValueError, match="sub-cgroup"):
            bus._subcgroup(bad)


def _decoded(msg: Message) -> Message:
    """The message after a trip through the wire format (what systemd would parse)."""
    return Message.from_buffer(msg.serialise(serial=1))


def _check(msg: Message, member: str, signature: str | None, body: tuple[Any, ...]) -> None:
    m = _decoded(msg)
    f = m.header.fields
    assert f[HeaderFields.member] == member
    assert f.get(HeaderFields.signature) == signature
    assert m.body == body


def test_manager_messages() -> None:
    props: list[bus.Property] = [
        ("MemoryMax", ("t", 67108864)),
        ("IOReadBandwidthMax", ("a(st)", [("/dev/vda", 1048576)])),
        ("PIDs", ("au", [1234])),
        ("Delegate", ("b", True)),
        ("Slice", ("s", "x.slice")),
    ]
    msg = bus.msg_start_transient_unit("a.scope", "replace", props)
    f = msg.header.fields
    assert f[HeaderFields.destination] == "org.freedesktop.systemd1"
    assert f[HeaderFields.path] == "/org/freedesktop/systemd1"
    assert f[HeaderFields.interface] == "org.freedesktop.systemd1.Manager"
    _check(
        msg,
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        ("a.scope", "replace", [(k, v) for k, v in props], []),
    )
    _check(
        bus.msg_set_unit_properties("a.slice", True, props[:1]),
        "SetUnitProperties",
        "sba(sv)",
        ("a.slice", True, [("MemoryMax", ("t", 67108864))]),
    )
    _check(
        bus.msg_attach_processes("a.scope", "/sub", [1, 2]),
        "AttachProcessesToUnit",
        "ssau",
        ("a.scope", "/sub", [1, 2]),
    )
    _check(bus.msg_stop_unit("a.scope", "replace"), "StopUnit", "ss", ("a.scope", "replace"))
    _check(bus.msg_reset_failed_unit("a.scope"), "ResetFailedUnit", "s", ("a.scope",))
    _check(bus.msg_get_unit("a.scope"), "GetUnit", "s", ("a.scope",))
    _check(bus.msg_load_unit("a.scope"), "LoadUnit", "s", ("a.scope",))
    _check(bus.msg_get_unit_by_pid(42), "GetUnitByPID", "u", (42,))
    _check(bus.msg_subscribe(), "Subscribe", None, ())


def test_property_and_bus_messages() -> None:
    msg = bus.msg_get_property("/org/freedesktop/systemd1/unit/a_2eslice", bus.UNIT_IFACE, "Id")
    f = msg.header.fields
    assert f[HeaderFields.interface] == "org.freedesktop.DBus.Properties"
    assert f[HeaderFields.path] == "/org/freedesktop/systemd1/unit/a_2eslice"
    _check(msg, "Get", "ss", (bus.UNIT_IFACE, "Id"))

    rule = bus.job_removed_rule("a.slice")
    for part in (
        "type='signal'",
        "sender='org.freedesktop.systemd1'",
        "member='JobRemoved'",
        "arg2='a.slice'",
    ):
        assert part in rule
    add = bus.msg_add_match(rule)
    assert add.header.fields[HeaderFields.destination] == "org.freedesktop.DBus"
    _check(add, "AddMatch", "s", (rule,))
    _check(bus.msg_remove_match(rule), "RemoveMatch", "s", (rule,))


def test_bad_property_value_is_a_clear_error_before_any_io(sock_dir: Path) -> None:
    client = Systemd(str(sock_dir / "absent"))
    with pytest.raises(SystemdError, match="cannot encode") as info:
        client.start_transient_unit("a.slice", [("MemoryMax", ("t", "lots"))])
    assert type(info.value) is SystemdError and "('t', 67108864)" in str(info.value)
    assert info.value.__cause__ is not None


def test_importing_bus_and_governor_help_do_not_import_jeepney() -> None:
    code = (
        "import sys\n"
        "import governor.systemd.bus\n"
        "from governor.cli import main\n"
        "main(['--help'])\n"
        "assert 'jeepney' not in sys.modules, 'jeepney imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


# ---- the client against the fake ----


def test_bus_unavailable(sock_dir: Path) -> None:
    client = Systemd(str(sock_dir / "absent"), timeout=2.0)
    with pytest.raises(BusUnavailable) as info:
        client.version()
    assert info.value.errno == errno.ENOENT
    assert str(sock_dir / "absent") in str(info.value)
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_connects_lazily_and_version(fake: FakeSystemd, sd: Systemd) -> None:
    assert fake.connections == 0
    assert sd.version() == 252
    assert sd.version() == 252  # cached
    assert fake.members() == ["Hello", "Subscribe", "Get"]
    assert fake.calls[-1][2] == (bus.MANAGER_IFACE, "Version")


def test_start_waits_for_its_job(fake: FakeSystemd, sd: Systemd) -> None:
    props: list[bus.Property] = [("MemoryMax", ("t", 67108864))]
    sd.start_transient_unit("a.slice", props)
    assert fake.units["a.slice"] == "active"
    members = fake.members()
    # the match is in place before the start is sent, and removed after the job
    assert members[2:] == ["AddMatch", "StartTransientUnit", "RemoveMatch"]
    assert "arg2='a.slice'" in fake.calls[2][2][0]
    assert fake.calls[3][2] == ("a.slice", "replace", [("MemoryMax", ("t", 67108864))], [])


def test_a_job_faster_than_the_reply_is_not_missed(fake: FakeSystemd, sd: Systemd) -> None:
    fake.signal_first = True
    sd.start_transient_unit("a.slice", [])
    fake.job_results["b.slice"] = "dependency"
    with pytest.raises(SystemdError, match="'dependency'") as info:
        sd.start_transient_unit("b.slice", [])
    assert info.value.unit == "b.slice"


@pytest.mark.parametrize("result", ["failed", "timeout", "canceled", "dependency", "skipped"])
def test_job_results_other_than_done(fake: FakeSystemd, sd: Systemd, result: str) -> None:
    fake.job_results["a.slice"] = result
    with pytest.raises(SystemdError) as info:
        sd.start_transient_unit("a.slice", [])
    assert type(info.value) is SystemdError
    assert f"'{result}'" in str(info.value) and "a.slice" in str(info.value)
    assert info.value.method == "StartTransientUnit"


def test_wait_false_returns_after_the_reply(fake: FakeSystemd, sd: Systemd) -> None:
    fake.no_signal.add("a.slice")
    sd.start_transient_unit("a.slice", [], wait=False)
    assert "AddMatch" not in fake.members()
    sd.stop_unit("a.slice", wait=False)
    assert "a.slice" not in fake.units


def test_job_wait_times_out(fake: FakeSystemd) -> None:
    fake.no_signal.add("a.slice")
    with Systemd(fake.path, timeout=0.3) as sd:
        with pytest.raises(SystemdError, match="timed out waiting for job") as info:
            sd.start_transient_unit("a.slice", [])
        assert isinstance(info.value.__cause__, TimeoutError)
        # the connection is still good
        assert sd.unit_active_state("a.slice") == "active"
    assert fake.connections == 1


def test_unit_exists_active_is_reported(fake: FakeSystemd, sd: Systemd) -> None:
    fake.units["a.scope"] = "active"
    with pytest.raises(UnitExists) as info:
        sd.start_transient_unit("a.scope", [])
    assert "it is active" in str(info.value) and "a.scope" in str(info.value)
    assert "ResetFailedUnit" not in fake.members()
    assert fake.members().count("StartTransientUnit") == 1


@pytest.mark.parametrize("state", ["failed", "inactive"])
def test_unit_exists_leftover_is_reset_and_retried(
    fake: FakeSystemd, sd: Systemd, state: str
) -> None:
    fake.units["a.scope"] = state
    sd.start_transient_unit("a.scope", [("PIDs", ("au", [1]))])
    assert fake.units["a.scope"] == "active"
    members = fake.members()
    assert members.count("StartTransientUnit") == 2
    assert members.index("ResetFailedUnit") < len(members) - members[::-1].index(
        "StartTransientUnit"
    )


def test_unit_exists_twice_gives_up(fake: FakeSystemd, sd: Systemd) -> None:
    fake.units["a.scope"] = "failed"
    fake.sticky.add("a.scope")  # the reset does not free the name
    with pytest.raises(UnitExists):
        sd.start_transient_unit("a.scope", [])
    assert fake.members().count("StartTransientUnit") == 2
    assert fake.members().count("ResetFailedUnit") == 1


def test_stop_unit(fake: FakeSystemd, sd: Systemd) -> None:
    fake.units["a.scope"] = "active"
    sd.stop_unit("a.scope")
    assert "a.scope" not in fake.units
    with pytest.raises(NoSuchUnit, match=r"StopUnit of b\.scope"):
        sd.stop_unit("b.scope")


def test_queries(fake: FakeSystemd, sd: Systemd) -> None:
    fake.units.update({"a.slice": "active", "b.scope": "failed"})
    assert sd.unit_active_state("a.slice") == "active"
    assert sd.unit_active_state("b.scope") == "failed"
    assert sd.unit_active_state("c.scope") is None
    assert sd.control_group("a.slice") == "/a.slice/a.slice"
    assert sd.control_group("c.slice") is None
    assert sd.unit_property("a.slice", "org.freedesktop.systemd1.Slice", "MemoryMax") == 67108864
    # a unit that is not loaded is loaded for the read
    assert sd.unit_property("c.slice", bus.UNIT_IFACE, "LoadState") == "not-found"
    assert "LoadUnit" in fake.members()
    with pytest.raises(SystemdError, match="no such property"):
        sd.unit_property("a.slice", bus.UNIT_IFACE, "Nope")
    with pytest.raises(SystemdError, match="has no control group"):
        sd.control_group("a.target")


def test_attach_and_unit_by_pid(fake: FakeSystemd, sd: Systemd) -> None:
    fake.units["a.scope"] = "active"
    sd.attach_processes("a.scope", [101, 102])
    assert fake.calls[-1] == ("AttachProcessesToUnit", "ssau", ("a.scope", "", [101, 102]))
    sd.attach_processes("a.scope", [103], subcgroup="payload")
    assert fake.calls[-1][2] == ("a.scope", "/payload", [103])
    assert sd.unit_by_pid(102) == "a.scope"
    with pytest.raises(NoSuchUnit, match="pid 999"):
        sd.unit_by_pid(999)
    with pytest.raises(SystemdError, match="sub-cgroup"):
        sd.attach_processes("a.scope", [1], subcgroup="../escape")


def test_set_unit_properties(fake: FakeSystemd, sd: Systemd) -> None:
    fake.units["a.slice"] = "active"
    sd.set_unit_properties("a.slice", [("CPUWeight", ("t", 50))])
    assert fake.calls[-1] == ("SetUnitProperties", "sba(sv)", ("a.slice", True, [
        ("CPUWeight", ("t", 50))
    ]))
    sd.set_unit_properties("a.slice", [], runtime=False)
    assert fake.calls[-1][2] == ("a.slice", False, [])
    with pytest.raises(SystemdError, match="Cannot set property Bogus") as info:
        sd.set_unit_properties("a.slice", [("Bogus", ("t", 1))])
    assert info.value.name == "org.freedesktop.DBus.Error.InvalidArgs"
    assert info.value.fix is not None and "systemd.resource-control" in info.value.fix


def test_reconnects_once_after_a_disconnect(fake: FakeSystemd, sd: Systemd) -> None:
    fake.units["a.slice"] = "active"
    assert sd.unit_active_state("a.slice") == "active"
    fake.drop["GetUnit"] = 1
    assert sd.unit_active_state("a.slice") == "active"
    assert fake.connections == 2
    # the new connection said Hello and subscribed again
    assert fake.members().count("Subscribe") == 2


def test_a_second_disconnect_fails(fake: FakeSystemd, sd: Systemd) -> None:
    fake.drop["GetUnit"] = 2
    with pytest.raises(SystemdError, match="lost") as info:
        sd.unit_active_state("a.slice")
    assert isinstance(info.value.__cause__, ConnectionError)
    assert fake.connections == 2
    # and the client is usable afterwards
    assert sd.unit_active_state("a.slice") is None


def test_reply_timeout(fake: FakeSystemd) -> None:
    fake.silent.add("GetUnit")
    with Systemd(fake.path, timeout=0.3) as sd:
        with pytest.raises(SystemdError, match=r"no reply from systemd within 0\.3 s") as info:
            sd.unit_active_state("a.slice")
        assert info.value.unit == "a.slice" and info.value.method == "GetUnit"
        assert isinstance(info.value.__cause__, TimeoutError)


def test_hello_is_bounded_too(fake: FakeSystemd) -> None:
    fake.silent.add("Hello")
    with Systemd(fake.path, timeout=0.3) as sd, pytest.raises(SystemdError, match="no reply"):
        sd.version()


def test_threads_share_one_connection(fake: FakeSystemd, sd: Systemd) -> None:
    for i in range(8):
        fake.units[f"u{i}.scope"] = "active" if i % 2 else "failed"
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(20):
                want = "active" if i % 2 else "failed"
                assert sd.unit_active_state(f"u{i}.scope") == want
            sd.start_transient_unit(f"new{i}.slice", [])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert fake.connections == 1
    assert all(fake.units[f"new{i}.slice"] == "active" for i in range(8))


def test_no_jeepney_exception_leaks_on_garbage(sock_dir: Path) -> None:
    # a peer that authenticates, then answers Hello with bytes that are not D-Bus
    path = str(sock_dir / "garbage")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            FakeSystemd._handshake(conn)
            conn.sendall(b"x" * 64)
            with contextlib.suppress(OSError):
                conn.recv(1)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with Systemd(path, timeout=1.0) as sd, pytest.raises(SystemdError) as info:
            sd.version()
        assert info.value.__cause__ is not None
    finally:
        listener.close()
        os.unlink(path)
