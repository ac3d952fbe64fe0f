"""OOM events and the exporter on a real cgroup v2 kernel, up to a real Prometheus and
Alertmanager (Debian's packages, visible in the guest through the shared host root).

Each test treats a fresh scratch subtree as governor's subtree: tenant ``t``, groups below.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from governor.cgroupfs import parse
from governor.cgroupfs.files import CgroupFS
from governor.exporter.render import Health, Snapshot, render
from governor.exporter.server import Exporter
from governor.metering.sampler import Sampler
from governor.oom.actions import OomActions, WebhookAlerter
from governor.oom.kmsg import KmsgReader
from governor.oom.store import DbSink
from governor.oom.watch import OomWatcher
from governor.policy.model import Limits, OomSettings, PressureKey
from governor.store.db import make_engine, scope_factory, upgrade
from governor.store.models import OomEvent as Row
from governor.store.spool import WRITE_ERRNOS
from tests.helpers.exposition import parsed_samples
from tests.unit.test_exporter_dashboards import dashboard_expressions, rule_expressions

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
HOG = "b = b'x' * (96 << 20)\nprint('survived')"
COMM = Path(sys.executable).name[:15]


def wait_for(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def w(path: Path, value: str) -> None:
    with path.open("w") as f:
        f.write(value)


def in_group(group: Path, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    procs = str(group / "cgroup.procs")

    def pre() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    return subprocess.Popen(argv, preexec_fn=pre, **kw)  # noqa: PLW1509


class Receiver:
    """A webhook receiver: every JSON POST body, by path."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, Any]] = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


@dataclass
class Gov:
    """The pieces as the daemon wires them, around one scratch subtree."""

    scratch: Path
    fs: CgroupFS
    sink: DbSink
    watcher: OomWatcher
    sampler: Sampler
    exporter: Exporter
    receiver: Receiver
    alerter: WebhookAlerter
    limits: dict[str, Limits] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    #: the passes' CPU by stage, as the daemon counts it (this one only reads: the other
    #: stages stay 0, as a daemon's do before it stores anything)
    pass_cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("read", "store", "meter", "other", "gc"), 0.0))

    def publish(self) -> None:
        t0 = time.thread_time()
        p = self.sampler.sample()
        self.pass_cpu["read"] += time.thread_time() - t0
        snap = Snapshot(node="vm", groups=dict(self.sampler.latest), limits=self.limits,
                        costs={("t", "EUR"): Decimal("1.25")},
                        pressure_warnings=dict(self.watcher.warnings),
                        health=Health(pass_duration=p.duration,
                                      last_success=p.started.timestamp(),
                                      groups_sampled=len(p.samples), placements={"moved": 1},
                                      reloads={"ok": 1, "invalid": 0}, drift={"memory.max": 0},
                                      enforce_write_errors=0,
                                      db_write_errors=self.watcher.db_write_errors,
                                      spool_depth=0, alerts=dict(self.alerter.results),
                                      # as the daemon wires them (a spool never failed)
                                      sample_errors=dict(self.sampler.error_counts),
                                      pass_cpu=dict(self.pass_cpu),
                                      spool_write_errors=dict.fromkeys(WRITE_ERRNOS, 0)))
        self.watcher.on_sample(self.sampler.latest)
        self.exporter.publish(render(snap), created=p.started.timestamp())

    def loop(self) -> None:
        while not self.stop.wait(0.5):
            self.publish()

    def rows(self) -> list[Any]:
        with self.sink.scope() as s:   # a Core connection: rows, not ORM objects
            return list(s.execute(select(Row).order_by(Row.id)))

    def metric(self, name: str, group: str) -> float | None:
        with urllib.request.urlopen(self.exporter.url + "/metrics", timeout=10) as r:
            s = parsed_samples(r.read().decode())
        return s.get((name, (("group", group), ("node", "vm"), ("tenant", "t"))))


@pytest.fixture
def gov(scratch_subtree: Path, tmp_path: Path) -> Iterator[Gov]:
    s = scratch_subtree
    w(s / "cgroup.subtree_control", "+cpu +io +memory +pids")
    (s / "t").mkdir()
    w(s / "t/cgroup.subtree_control", "+cpu +io +memory +pids")
    url = f"sqlite:///{tmp_path}/db/governor.db"
    upgrade(url)
    engine = make_engine(url)
    fs = CgroupFS(s.parent)
    sink = DbSink(scope_factory(engine), "vm")
    receiver = Receiver()
    alerter = WebhookAlerter(receiver.url + "/oom", timeout=5, retries=3, backoff=0.2)
    actions = OomActions(alerter=alerter)
    kmsg = KmsgReader()
    watcher = OomWatcher(fs, s.name, "vm", sink=sink, actions=actions, kmsg=kmsg,
                         victim_wait=0.3, rescan_interval=0.5)
    sampler = Sampler(fs, s.name, "vm")
    watcher.events_listener = sampler.events_trust()   # as the daemon wires them
    exporter = Exporter("127.0.0.1:0", stale_after=10)
    exporter.start()
    g = Gov(s, fs, sink, watcher, sampler, exporter, receiver, alerter)
    t = threading.Thread(target=g.loop, daemon=True)
    try:
        yield g
    finally:
        g.stop.set()
        t.join(5) if t.is_alive() else None
        watcher.close()
        alerter.stop(2)
        exporter.stop()
        receiver.close()
        sampler.close()
        fs.close()
        engine.dispose()


def make_group(g: Gov, name: str, files: dict[str, str], oom: OomSettings) -> Path:
    p = g.scratch / "t" / name
    p.mkdir()
    for f, v in files.items():
        w(p / f, v)
    g.watcher.set_settings({**g.watcher._settings, f"t/{name}": oom})
    return p


def kill_one(group: Path) -> int:
    p = in_group(group, [sys.executable, "-c", HOG], stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=180)
    assert p.returncode == -signal.SIGKILL and b"survived" not in out
    return p.pid


def kills(g: Gov, path: str) -> list[Any]:
    from governor.store.models import Group
    with g.sink.scope() as s:
        return list(s.execute(select(Row).join(Group, Group.id == Row.group_id).where(
            Row.kind == "oom_kill", Group.path == path).order_by(Row.id)))


def _path(g: Gov, r: Any) -> str:
    from governor.store.models import Group
    with g.sink.scope() as s:
        return str(s.execute(select(Group.path).where(Group.id == r.group_id)).scalar_one())


def test_oom_kill_recorded_with_victim_metric_webhook_and_prometheus_alertmanager(
        gov: Gov, tmp_path: Path) -> None:
    g = gov
    grp = make_group(g, "g", {"memory.max": str(32 << 20), "memory.swap.max": "0",
                              "memory.high": str(28 << 20), "pids.max": "64"},
                     OomSettings(actions=("log", "alert")))
    g.limits.update({"t/g": Limits(memory_max=32 << 20, memory_high=28 << 20, memory_low=0,
                                   memory_min=0, memory_swap_max=0, pids_max=64),
                     "t": Limits(memory_max=256 << 20)})
    g.watcher.start()
    g.publish()
    threading.Thread(target=g.loop, daemon=True).start()
    prom, procs = start_prometheus_alertmanager(g, tmp_path)
    try:
        # Prometheus has scraped the group with its counter at zero (so increase() sees it)
        wait_for(lambda: query(prom, 'governor_oom_kills_total{group="g"} == 0'), 120,
                 "a first scrape of the group")
        pid = kill_one(grp)
        # a generous deadline, not a latency target (targets live in bench/: a loaded CI
        # run with a CPU hog and a second VM beside it needed more than 2 s here)
        rows = wait_for(lambda: [r for r in kills(g, "t/g") if r.pid is not None], 30,
                        "the OOM kill in the database with its victim", step=0.05)
        (row,) = rows
        assert (row.pid, row.comm, row.count, row.missed_while_down) == (pid, COMM, 1, False)
        assert row.rss_bytes is not None and 16 << 20 <= row.rss_bytes <= 40 << 20
        assert sum(r.count for r in kills(g, "t/g")) == 1
        wait_for(lambda: g.metric("governor_oom_kills_total", "g") == 1, 30, "the counter")
        post = wait_for(lambda: [b for p, b in g.receiver.posts if p == "/oom"
                                 and b["kind"] == "oom_kill"], 30, "the webhook POST")
        assert (post[0]["pid"], post[0]["path"]) == (pid, "t/g")
        # the rule fires in Prometheus and Alertmanager delivers it
        firing = wait_for(lambda: [a for a in api(prom, "/api/v1/alerts")["alerts"]
                                   if a["labels"]["alertname"] == "GovernorOOMKill"
                                   and a["state"] == "firing"], 90, "GovernorOOMKill firing")
        assert firing[0]["labels"]["tenant"] == "t" and firing[0]["labels"]["group"] == "g"
        delivered = wait_for(lambda: [a for p, b in g.receiver.posts if p == "/am"
                                      for a in b["alerts"]
                                      if a["labels"]["alertname"] == "GovernorOOMKill"], 90,
                             "Alertmanager's webhook delivery of GovernorOOMKill")
        alert = delivered[0]
        assert (alert["labels"]["tenant"], alert["labels"]["group"]) == ("t", "g")
        assert alert["status"] == "firing"
        check_expressions(g, prom)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_memory_events_unread_while_unchanged_and_read_after_a_kill(gov: Gov) -> None:
    """Issue #16: with the OOM watch's inotify watch on a group's memory.events, the passes
    hand out the value read last instead of reading the file (one read of ten a group a
    pass) until the kernel notifies a change; a real OOM kill is such a change, and the
    next passes read it, though the slow tier (which reads it regardless) is a thousand
    passes away."""
    from governor.cgroupfs.reader import ACCELERATED, EVENTS

    g = gov
    grp = make_group(g, "k", {"memory.max": str(32 << 20), "memory.swap.max": "0"},
                     OomSettings(actions=("log",)))
    sampler = Sampler(g.fs, g.scratch.name, "vm", slow_every=1000)
    g.watcher.events_listener = sampler.events_trust()
    g.watcher.start()
    try:
        def latest() -> Any:
            sampler.sample()
            return sampler.latest["t/k"]

        wait_for(lambda: g.watcher._groups.get("t/k") is not None, 30, "the group watched")
        for _ in range(4):   # opened, marked, then read and trusted (slow slots passed)
            assert latest().memory_events["oom_kill"] == 0
        rel = f"{g.scratch.name}/t/k"
        slot = sampler.reader.entries[rel].cache[EVENTS]
        if ACCELERATED:      # the value is handed out unread
            assert slot is not None and len(slot) == 3, slot
        kill_one(grp)
        kernel = parse.parse_flat_keyed((grp / "memory.events").read_text(), "memory.events")
        assert kernel["oom_kill"] == 1
        st = wait_for(lambda: (s := latest()).memory_events["oom_kill"] == 1 and s, 10,
                      "the kill in a pass (the watch's event)", step=0.2)
        assert st.memory_events == kernel
        if ACCELERATED:      # and trusted again from that read on
            slot = sampler.reader.entries[rel].cache[EVENTS]
            assert slot is not None and len(slot) == 3, slot
    finally:
        sampler.close()


def test_two_quick_kills_count_two_and_group_kill_takes_the_whole_group(gov: Gov) -> None:
    g = gov
    two = make_group(g, "two", {"memory.max": str(32 << 20), "memory.swap.max": "0"},
                     OomSettings(actions=("log",)))
    whole = make_group(g, "whole", {"memory.max": str(32 << 20), "memory.swap.max": "0",
                                    "memory.oom.group": "1"}, OomSettings(group_kill=True))
    g.watcher.start()
    time.sleep(1.0)
    a = in_group(two, [sys.executable, "-c", HOG], stdout=subprocess.PIPE)
    b = in_group(two, [sys.executable, "-c", HOG], stdout=subprocess.PIPE)
    for p in (a, b):
        p.communicate(timeout=180)
    assert {a.returncode, b.returncode} == {-signal.SIGKILL}
    ev = (two / "memory.events").read_text()
    assert "oom_kill 2" in ev
    sleepers = [in_group(whole, ["sleep", "600"]) for _ in range(2)]
    time.sleep(0.5)
    hog = in_group(whole, [sys.executable, "-c", HOG], stdout=subprocess.PIPE)
    hog.communicate(timeout=180)
    for p in sleepers:
        assert p.wait(30) == -signal.SIGKILL  # the whole group went, not only the hog
    assert hog.returncode == -signal.SIGKILL
    def counter(group: Path, key: str) -> int:
        return int(dict(line.split() for line in
                        (group / "memory.events").read_text().splitlines())[key])
    # Linux 6.1 kills the chosen victim, then every member of the oom.group *including the
    # victim again* (mm/oom_kill.c oom_kill_memcg_member): 3 tasks can count 4 kills.  The
    # recorded total must equal the kernel's counter, whatever it is.
    whole_kills = counter(whole, "oom_kill")
    assert whole_kills >= 3 and counter(whole, "oom_group_kill") == 1
    wait_for(lambda: sum(r.count for r in kills(g, "t/two")) == 2
             and sum(r.count for r in kills(g, "t/whole")) == whole_kills
             and any(r.kind == "oom_group_kill" for r in g.rows()), 10, "all kills recorded")
    time.sleep(1.5)  # nothing more arrives late
    assert sum(r.count for r in kills(g, "t/two")) == 2
    assert {r.pid for r in kills(g, "t/two")} == {a.pid, b.pid}
    assert {r.pid for r in kills(g, "t/whole")} == {hog.pid, *(p.pid for p in sleepers)}
    assert sum(r.count for r in g.rows() if r.kind == "oom_group_kill") == 2  # whole + t
    kernel = {k: int(v) for k, v in (line.split() for line in
                                     (g.scratch / "t/memory.events").read_text().splitlines())}
    tenant_kills = sum(r.count for r in kills(g, "t"))
    assert tenant_kills == kernel["oom_kill"] == 2 + whole_kills
    assert sum(r.count for r in kills(g, "t/whole")) == whole_kills


def test_memory_pressure_trigger_warns_before_any_kill(gov: Gov) -> None:
    """oom.pressure some_avg10 = 5 arms a PSI trigger ("some 500000 10000000") on the
    group's memory.pressure; a process throttled over memory.high (no swap: the kernel makes
    it sleep, a memory stall) fires it, and a ``pressure`` event is recorded while nothing
    was killed.  No sampling pass runs here, so only the trigger can raise the event."""
    g = gov
    grp = make_group(g, "pressed", {"memory.high": str(24 << 20), "memory.swap.max": "0"},
                     OomSettings(actions=("log",), pressure=((PressureKey.SOME_AVG10, 5.0),)))
    g.watcher.start()

    def armed() -> bool:
        w = g.watcher._groups.get("t/pressed")
        return w is not None and w.psi_fd is not None

    wait_for(armed, 30, "the PSI trigger armed")
    assert g.watcher._groups["t/pressed"].psi_line == "some 500000 10000000"
    assert not [r for r in g.rows() if r.kind == "pressure"]
    # over memory.high the allocation is throttled, not refused: the hog gets its 96 MiB
    # in the end, then holds it
    hog = in_group(grp, [sys.executable, "-c",
                         "b = b'x' * (96 << 20)\nimport time\ntime.sleep(600)"])
    try:
        wait_for(lambda: any(r.kind == "pressure" and _path(g, r) == "t/pressed"
                             for r in g.rows()), 120, "a pressure event from the trigger")
        assert hog.poll() is None  # alive: a warning, not a kill
    finally:
        hog.kill()
        hog.wait(60)
    psi = (grp / "memory.pressure").read_text().split("\n")[0]
    assert psi.startswith("some ") and int(psi.rsplit("total=", 1)[1]) > 0
    events = dict(line.split() for line in (grp / "memory.events").read_text().splitlines())
    assert int(events["high"]) > 0 and events["oom_kill"] == "0"
    assert g.watcher.warnings["t/pressed"] >= 1


def test_exporter_output_equals_the_kernel_values(gov: Gov) -> None:
    g = gov
    grps = [make_group(g, f"k{i}", {"memory.max": str((64 + i) << 20), "pids.max": str(10 + i)},
                       OomSettings()) for i in range(3)]
    sleepers = [in_group(p, ["sleep", "600"]) for p in grps]
    try:
        # compare only once the groups are idle (the sleepers have exec'd and sleep): on a
        # busy host the start-up of a process can take longer than any fixed pause
        def usage() -> list[str]:
            return [(p / "cpu.stat").read_text().split("\n")[0] for p in grps]

        deadline = time.monotonic() + 60
        before = usage()
        while True:
            time.sleep(0.5)
            now = usage()
            if now == before or time.monotonic() > deadline:
                break
            before = now

        def mismatches() -> list[str]:
            g.publish()
            with urllib.request.urlopen(g.exporter.url + "/metrics", timeout=10) as r:
                s = parsed_samples(r.read().decode())
            out = []
            for i, p in enumerate(grps):
                lbl = (("group", f"k{i}"), ("node", "vm"), ("tenant", "t"))
                cpu = dict(line.split() for line in (p / "cpu.stat").read_text().splitlines())
                ev = dict(line.split()
                          for line in (p / "memory.events").read_text().splitlines())
                psi = (p / "memory.pressure").read_text().split("\n")[0].split()[-1]
                for name, kernel in (
                        ("governor_cpu_usage_seconds_total", int(cpu["usage_usec"]) / 1e6),
                        ("governor_cpu_throttled_periods_total", int(cpu["nr_throttled"])),
                        ("governor_memory_usage_bytes", int((p / "memory.current").read_text())),
                        ("governor_memory_peak_bytes", int((p / "memory.peak").read_text())),
                        ("governor_pids_current", int((p / "pids.current").read_text())),
                        ("governor_oom_kills_total", int(ev["oom_kill"])),
                        ("governor_memory_high_events_total", int(ev["high"])),
                        ("governor_memory_pressure_some_seconds_total",
                         int(psi.split("=")[1]) / 1e6)):
                    if s[(name, lbl)] != kernel:
                        out.append(f"k{i} {name}: exported {s[(name, lbl)]}, kernel {kernel}")
                assert s[("governor_pids_current", lbl)] == 1
                assert s[("governor_oom_kills_total", lbl)] == 0
            return out

        # an idle group's values still move now and then (memory.current when the kernel
        # drains its per-CPU charge cache: 36 pages once, in a CI run): equal in a pass
        # during which the kernel's values held still, as they are when read back at once
        for _ in range(10):
            diff = mismatches()
            if not diff:
                break
            time.sleep(0.5)
        assert not diff, diff
    finally:
        for p in sleepers:
            p.kill()
            p.wait()


# --- Prometheus and Alertmanager -----------------------------------------------------------

def api(base: str, path: str, **params: str) -> Any:
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=20) as r:
        doc = json.loads(r.read())
    assert doc["status"] == "success", doc
    return doc["data"]


def query(base: str, expr: str) -> list[Any]:
    try:
        return list(api(base, "/api/v1/query", query=expr)["result"])
    except OSError:
        return []


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_prometheus_alertmanager(g: Gov, tmp: Path
                                  ) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """Start both; returns Prometheus's base URL and the processes (to terminate)."""
    prom_bin, am_bin = shutil.which("prometheus"), shutil.which("prometheus-alertmanager")
    if prom_bin is None or am_bin is None:
        pytest.skip("Debian's prometheus and prometheus-alertmanager are not installed")
    pport, aport = free_port(), free_port()
    (tmp / "am.yml").write_text(f"""
route:
  receiver: test
  group_by: [alertname, tenant, group]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: test
    webhook_configs:
      - url: {g.receiver.url}/am
        send_resolved: false
""")
    (tmp / "prom.yml").write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{REPO}/dashboards/alerts.yml", "{REPO}/dashboards/recording.yml"]
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:{aport}"]
scrape_configs:
  - job_name: governor
    static_configs:
      - targets: ["127.0.0.1:{g.exporter.port}"]
""")
    am = subprocess.Popen([am_bin, f"--config.file={tmp}/am.yml",
                           f"--storage.path={tmp}/am", f"--web.listen-address=127.0.0.1:{aport}",
                           "--cluster.listen-address="],
                          stdout=(tmp / "am.log").open("wb"), stderr=subprocess.STDOUT)
    prom = subprocess.Popen([prom_bin, f"--config.file={tmp}/prom.yml",
                             f"--storage.tsdb.path={tmp}/prom",
                             f"--web.listen-address=127.0.0.1:{pport}"],
                            stdout=(tmp / "prom.log").open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{pport}"

    def ready(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status == 200
        except OSError:
            return False
    wait_for(lambda: ready(base + "/-/ready"), 180, "prometheus ready", step=1)
    wait_for(lambda: ready(f"http://127.0.0.1:{aport}/-/ready"), 180, "alertmanager ready",
             step=1)
    return base, [prom, am]


def check_expressions(g: Gov, prom: str) -> None:
    """Every dashboard and rule expression parses in Prometheus and returns data."""
    with urllib.request.urlopen(g.exporter.url + "/metrics", timeout=10) as r:
        exported = {name for name, _ in parsed_samples(r.read().decode())}
    time.sleep(3)  # a few more scrapes, so rate() has two points in every window
    no_data: list[str] = []
    for where, expr in {**dashboard_expressions(), **rule_expressions()}.items():
        # the rules' comparison is what makes them fire: check the data under it
        body = expr.rsplit(">", 1)[0] if where[0].isupper() else expr
        data = api(prom, "/api/v1/query", query=expr)  # parses (status success)
        assert data["resultType"] in ("vector", "scalar"), where
        if not query(prom, body):
            no_data.append(where)
    # the only series the VM cannot have: block IO (its disks are a RAM overlay and 9p);
    # and the writable layers' bytes and storage.max hits while none are measured or
    # limited on the host (issue #19)
    for where in no_data:
        expr = {**dashboard_expressions(), **rule_expressions()}[where]
        no_io = "governor_io_" in expr and not any(
            n.startswith("governor_io_") and "pressure" not in n for n in exported)
        no_storage = any(m in expr and m not in exported for m in (
            "governor_storage_bytes", "governor_storage_max_reached_total"))
        assert no_io or no_storage, where
