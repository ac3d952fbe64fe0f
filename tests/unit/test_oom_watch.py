"""OOM watcher on a fake cgroupfs: coalesced deltas, exact totals across restarts, victims,
warnings; kmsg parsing on real Linux 6.1 lines; webhook retries against a local server."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from sqlalchemy import select

from governor.cgroupfs.files import CgroupFS
from governor.oom.actions import OomActions, WebhookAlerter
from governor.oom.events import OomEvent
from governor.oom.kmsg import KmsgReader, OomLogParser, split_record
from governor.oom.store import DbSink
from governor.oom.watch import OomWatcher, pressure_trigger
from governor.policy.model import OomSettings, PressureKey
from governor.store.db import make_engine, scope_factory, upgrade
from governor.store.models import OomEvent as Row

# Linux 6.1 (Debian bookworm, the sandbox VM), /dev/kmsg records of a memcg OOM kill
SUMMARY = ("6,1234,5678901,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,"
           "mems_allowed=0,oom_memcg=/gov/acme/web,task_memcg=/gov/acme/web,task=python3,"
           "pid=4242,uid=0")
KILLED = ("3,1235,5678950,-;Memory cgroup out of memory: Killed process 4242 (python3) "
          "total-vm:110284kB, anon-rss:98304kB, file-rss:4096kB, shmem-rss:8kB, UID:0 "
          "pgtables:260kB oom_score_adj:0")
GROUP_KILL = [
    "6,1300,6000000,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,"
    "mems_allowed=0,oom_memcg=/gov/acme/batch,task_memcg=/gov/acme/batch,task=hog,pid=10,"
    "uid=1000",
    "3,1301,6000010,-;Memory cgroup out of memory: Killed process 10 (hog) total-vm:1000kB, "
    "anon-rss:500kB, file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:40kB oom_score_adj:0",
    "6,1302,6000020,-;Tasks in /gov/acme/batch are going to be killed due to "
    "memory.oom.group set",
    "3,1303,6000030,-;Memory cgroup out of memory: Killed process 11 (sleep (x)) "
    "total-vm:2000kB, anon-rss:100kB, file-rss:200kB, shmem-rss:0kB, UID:1000 "
    "pgtables:40kB oom_score_adj:0",
]


def test_kmsg_parser_on_kernel_lines() -> None:
    p = OomLogParser()
    assert split_record(SUMMARY)[:2] == (6, 5678901)  # type: ignore[index]
    assert p.feed(split_record(SUMMARY)[2]) is None  # type: ignore[index]
    v = p.feed(split_record(KILLED)[2], 5678950)  # type: ignore[index]
    assert v is not None
    assert (v.pid, v.comm, v.cgroup, v.oom_cgroup) == (4242, "python3", "/gov/acme/web",
                                                        "/gov/acme/web")
    assert (v.anon_rss_kb, v.file_rss_kb, v.shmem_rss_kb, v.total_vm_kb, v.uid) == (
        98304, 4096, 8, 110284, 0)
    assert v.rss_bytes == (98304 + 4096 + 8) * 1024
    assert p.feed("Out of memory: Killed process 1 (x) total-vm:1kB") is None  # global OOM
    assert split_record(" SUBSYSTEM=cgroup") is None


def test_kmsg_group_kill_members_belong_to_the_group(tmp_path: Path) -> None:
    log = tmp_path / "kmsg"
    log.write_text("\n".join(GROUP_KILL) + "\n")
    r = KmsgReader(str(log), from_end=False)
    assert r.open()
    victims = r.read()
    r.close()
    assert [(v.pid, v.comm, v.cgroup) for v in victims] == [
        (10, "hog", "/gov/acme/batch"), (11, "sleep (x)", "/gov/acme/batch")]
    assert victims[1].rss_bytes == 300 * 1024


EVENTS0 = {"low": 0, "high": 0, "max": 0, "oom": 0, "oom_kill": 0, "oom_group_kill": 0}


def write_events(d: Path, **counts: int) -> None:
    ev = {**EVENTS0, **counts}
    # write in place (like the kernel's seq file: same inode, IN_MODIFY)
    with (d / "memory.events").open("w") as f:
        f.write("".join(f"{k} {v}\n" for k, v in ev.items()))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "cg"
    for rel in ("gov/acme", "gov/acme/web", "gov/acme/batch"):
        (root / rel).mkdir(parents=True)
        write_events(root / rel)
    return root


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[DbSink]:
    url = f"sqlite:///{tmp_path}/db/g.db"
    upgrade(url)
    eng = make_engine(url)
    yield DbSink(scope_factory(eng), "n1")
    eng.dispose()


def stored(s: DbSink) -> list[tuple[str, int, bool, int | None]]:
    with s.scope() as session:   # a Core connection: rows, not ORM objects
        return [(r.kind, r.count, r.missed_while_down, r.pid) for r in
                session.execute(select(Row).order_by(Row.id))]


@pytest.mark.parametrize("inotify", [True, False])
def test_deltas_coalesced_and_counted_exactly(tree: Path, sink: DbSink, inotify: bool) -> None:
    fs = CgroupFS(tree, verify=False)
    w = OomWatcher(fs, "gov", "n1", sink=sink, use_inotify=inotify, victim_wait=0.0)
    got: list[OomEvent] = []
    w.listeners.append(got.append)
    w.rescan(startup=True)
    assert got == []  # nothing happened yet, nothing stored: nothing recorded
    # three kills between two notifications (the kernel rate-limits them): one delta of 3
    write_events(tree / "gov/acme/web", oom=3, oom_kill=3, max=7)
    write_events(tree / "gov/acme", oom=3, oom_kill=3, max=7)
    w.poll_once(1.0)
    w.flush()
    web = sorted((e.kind, e.count) for e in got if e.group == "web")
    assert web == [("max", 7), ("oom", 3), ("oom_kill", 3)]
    assert sorted((e.kind, e.count) for e in got if e.group is None) == web
    got.clear()
    write_events(tree / "gov/acme/web", oom=4, oom_kill=5, max=9)
    w.poll_once(1.0)
    w.flush()
    assert sorted((e.kind, e.count) for e in got) == [("max", 2), ("oom", 1), ("oom_kill", 2)]
    assert all(not e.missed_while_down for e in got)
    w.close()
    assert sink.totals("acme/web", fs.inode("gov/acme/web")) == {"max": 9, "oom": 4,
                                                                 "oom_kill": 5}


def test_restart_records_only_what_was_missed(tree: Path, sink: DbSink) -> None:
    fs = CgroupFS(tree, verify=False)
    write_events(tree / "gov/acme/web", oom_kill=2, oom=2)
    w = OomWatcher(fs, "gov", "n1", sink=sink)
    w.rescan(startup=True)  # first start: what the kernel counted before is "missed"
    w.close()
    assert [x for x in stored(sink) if x[0] == "oom_kill"] == [("oom_kill", 2, True, None)]
    # governor is down while two more kills happen; a restart records exactly those
    write_events(tree / "gov/acme/web", oom_kill=4, oom=4, high=1)
    w = OomWatcher(fs, "gov", "n1", sink=sink)
    w.rescan(startup=True)
    w.close()
    w = OomWatcher(fs, "gov", "n1", sink=sink)  # and a restart with nothing new: nothing
    w.rescan(startup=True)
    w.close()
    rows = stored(sink)
    assert [x for x in rows if x[0] == "oom_kill"] == [("oom_kill", 2, True, None),
                                                       ("oom_kill", 2, True, None)]
    assert sink.totals("acme/web", fs.inode("gov/acme/web")) == {"oom": 4, "oom_kill": 4,
                                                                 "high": 1}
    # a re-created group is a new incarnation with its own totals
    (tree / "gov/acme/web/memory.events").unlink()
    old = fs.inode("gov/acme/web")
    (tree / "gov/acme/web").rmdir()
    (tree / "gov/acme/hold").mkdir()  # so the filesystem does not hand the inode back
    (tree / "gov/acme/web").mkdir()
    assert fs.inode("gov/acme/web") != old
    write_events(tree / "gov/acme/web", oom_kill=1)
    w = OomWatcher(fs, "gov", "n1", sink=sink)
    w.rescan(startup=False)
    w.close()
    assert sink.totals("acme/web", fs.inode("gov/acme/web")) == {"oom_kill": 1}


def test_start_reads_every_groups_stored_totals_in_one_transaction(
        tree: Path, sink: DbSink) -> None:
    """Issue #16: adopting N groups at start is one database transaction, not N (a commit
    per group held the database from the first pass: "database is locked" at 3,000)."""
    fs = CgroupFS(tree, verify=False)
    for i in range(30):
        (tree / f"gov/acme/g{i:02d}").mkdir()
        write_events(tree / f"gov/acme/g{i:02d}", oom_kill=i % 3, oom=i % 3)
    w = OomWatcher(fs, "gov", "n1", sink=sink)
    w.rescan(startup=True)   # first start: the kernel's counts are recorded as missed
    w.close()
    opened = []
    scope = sink.scope

    def counting_scope():  # type: ignore[no-untyped-def]
        opened.append(1)
        return scope()

    sink.scope = counting_scope
    for i in range(30):
        write_events(tree / f"gov/acme/g{i:02d}", oom_kill=i % 3 + 1, oom=i % 3)
    got: list[OomEvent] = []
    w = OomWatcher(fs, "gov", "n1", sink=sink)
    w.listeners.append(got.append)
    w.rescan(startup=True)
    w.flush()
    w.close()
    # one transaction read every group's totals; the flush wrote the events in one more
    assert len(opened) == 2
    kills = sorted((e.group, e.count) for e in got if e.kind == "oom_kill" and e.group)
    assert kills == [(f"g{i:02d}", 1) for i in range(30)]   # only what was missed
    keys = [("acme/g00", fs.inode("gov/acme/g00")), ("acme/g05", fs.inode("gov/acme/g05")),
            ("acme/none", 999_999)]
    assert sink.totals_many(keys) == {keys[0]: {"oom_kill": 1}, keys[1]: {
        "oom": 2, "oom_kill": 3}, keys[2]: {}}


def test_victims_from_kmsg_are_attached(tree: Path, sink: DbSink, tmp_path: Path) -> None:
    fs = CgroupFS(tree, verify=False)
    klog = tmp_path / "kmsg"
    klog.write_text("")
    kmsg = KmsgReader(str(klog), from_end=False)
    kmsg.open()
    w = OomWatcher(fs, "gov", "n1", sink=sink, kmsg=kmsg, victim_wait=2.0)
    got: list[OomEvent] = []
    w.listeners.append(got.append)
    w.rescan(startup=True)
    write_events(tree / "gov/acme/web", oom_kill=2, oom=2)
    w.poll_once(0.2)
    assert [e.kind for e in got] == ["oom"]  # the kills wait for their victims
    with klog.open("a") as f:
        f.write(SUMMARY + "\n" + KILLED + "\n")
    w.poll_once(0.2)
    assert [e for e in got if e.kind == "oom_kill"] == []  # one of two victims known
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3 and not any(e.kind == "oom_kill" for e in got):
        w.poll_once(0.2)
    kills = sorted(((e.count, e.pid, e.comm, e.rss_bytes) for e in got
                    if e.kind == "oom_kill"), key=str)
    assert kills == [(1, 4242, "python3", (98304 + 4096 + 8) * 1024), (1, None, None, None)]
    w.close()
    assert sorted(((k, n, p) for k, n, _m, p in stored(sink) if k == "oom_kill"), key=str) == [
        ("oom_kill", 1, 4242), ("oom_kill", 1, None)]


def test_high_events_and_pressure_raise_rate_limited_warnings(tree: Path) -> None:
    fs = CgroupFS(tree, verify=False)
    w = OomWatcher(fs, "gov", "n1", warn_interval=60.0)
    w.rescan(startup=True)
    write_events(tree / "gov/acme/web", high=10)
    w.poll_once(0.5)
    write_events(tree / "gov/acme/web", high=20)
    w.poll_once(0.5)
    assert w.warnings["acme/web"] == 1  # two high deltas, one warning per interval
    assert w.recorded["high"] == 20  # every occurrence counted


def test_pressure_trigger_line() -> None:
    s = OomSettings(pressure=((PressureKey.FULL_AVG10, 5.0), (PressureKey.SOME_AVG10, 15.0)))
    assert pressure_trigger(s) == "full 500000 10000000"
    assert pressure_trigger(OomSettings(pressure=((PressureKey.SOME_AVG60, 5.0),))) is None


class _Receiver(http.server.BaseHTTPRequestHandler):
    answers: ClassVar[list[int]] = []
    bodies: ClassVar[list[dict[str, object]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        code = self.answers.pop(0) if self.answers else 200
        if code == 200:
            self.bodies.append(json.loads(body))
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    class R(_Receiver):
        answers: ClassVar[list[int]] = []
        bodies: ClassVar[list[dict[str, object]]] = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), R)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hook", R
    srv.shutdown()
    srv.server_close()


def _event(kind: str = "oom_kill") -> OomEvent:
    from datetime import UTC, datetime
    return OomEvent(node="n1", tenant="acme", group="web", cgroup_id=5,
                    ts=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), kind=kind, count=1, pid=9,
                    comm="py")


def test_webhook_retries_with_backoff_then_delivers(receiver: tuple[str, type[_Receiver]]
                                                    ) -> None:
    url, r = receiver
    r.answers.extend([503, 500])
    a = WebhookAlerter(url, timeout=2, retries=3, backoff=0.05)
    actions = OomActions(alerter=a)
    actions.set_settings({"acme/web": OomSettings(actions=("alert", "log"))})
    t0 = time.monotonic()
    actions.handle(_event())
    a.stop()
    assert time.monotonic() - t0 >= 0.05 + 0.1  # backoff 0.05 then 0.1
    assert a.results == {"ok": 1}
    (doc,) = r.bodies
    assert (doc["type"], doc["kind"], doc["pid"], doc["comm"], doc["path"]) == (
        "oom", "oom_kill", 9, "py", "acme/web")


def test_webhook_gives_up_and_4xx_is_final(receiver: tuple[str, type[_Receiver]]) -> None:
    url, r = receiver
    r.answers.extend([500, 500, 500, 404])
    a = WebhookAlerter(url, timeout=2, retries=2, backoff=0.01)
    a.submit({"n": 1})  # 500 three times: failed
    a.submit({"n": 2})  # 404: failed at once
    a.stop()
    assert a.results == {"failed": 2} and r.bodies == []
    dead = WebhookAlerter("http://127.0.0.1:9/x", timeout=0.5, retries=1, backoff=0.01)
    dead.submit({"n": 3})
    dead.stop()
    assert dead.results == {"failed": 1}


def test_webhook_queue_is_bounded_and_never_blocks() -> None:
    import socket

    # a receiver that accepts connections (the kernel's backlog does) and never answers:
    # each delivery waits out its 0.2 s timeout, so the queue fills deterministically (a
    # refused port answered at once, and a fast worker drained it: 44 dropped, not 47)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(128)
        port = silent.getsockname()[1]
        a = WebhookAlerter(f"http://127.0.0.1:{port}/x", timeout=0.2, retries=0,
                           max_queue=2)
        t0 = time.monotonic()
        results = [a.submit({"n": i}) for i in range(50)]
        # blocking would wait on deliveries (0.2 s timeout each): 50 of them take 10 s;
        # the bound is loose because a loaded CI host stretches everything
        assert time.monotonic() - t0 < 5.0
        assert results.count(False) >= 47 and a.results["dropped"] == results.count(False)
        a.stop()


def test_restart_hook_only_for_restart_groups() -> None:
    actions = OomActions()
    actions.set_settings({"acme/web": OomSettings(actions=("restart",)),
                          "acme/db": OomSettings(actions=("log",))})
    seen: list[tuple[str, int | None]] = []
    unsubscribe = actions.on_oom(lambda path, ev: seen.append((path, ev.pid)))
    actions.on_oom(lambda path, ev: 1 / 0)  # a broken subscriber does not stop the others
    actions.handle(_event())
    actions.handle(_event("high"))  # a warning is not a kill: no restart
    actions.handle(_event("max"))  # not a kill either
    assert seen == [("acme/web", 9)]
    unsubscribe()
    actions.handle(_event())
    assert seen == [("acme/web", 9)]


def test_warnings_log_and_alert_once_per_interval_kills_always(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    class Sink:
        def __init__(self) -> None:
            self.docs: list[dict[str, object]] = []

        def submit(self, doc: dict[str, object]) -> bool:
            self.docs.append(doc)
            return True

    sink = Sink()
    actions = OomActions(alerter=sink, warn_every=60.0)  # type: ignore[arg-type]
    actions.set_settings({"acme/web": OomSettings(actions=("alert", "log"))})
    with caplog.at_level(logging.WARNING, logger="governor.oom"):
        for _ in range(50):  # a group throttled over memory.high: its counter keeps moving
            actions.handle(_event("high"))
        actions.handle(_event("pressure"))  # another kind: its own interval
        for _ in range(3):
            actions.handle(_event("oom_kill"))
    assert [d["kind"] for d in sink.docs] == ["high", "pressure", "oom_kill", "oom_kill",
                                              "oom_kill"]
    assert actions.counts["suppressed"] == 49
    assert [r.getMessage() for r in caplog.records].count("memory pressure warning") == 2
    actions._last_warning[("acme/web", "high")] -= 61  # the interval has passed
    actions.handle(_event("high"))
    assert len(sink.docs) == 6


def test_database_down_at_start_is_one_error_not_one_per_group(
        tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    class DownSink:
        def totals(self, path: str, cid: int) -> dict[str, int]:
            raise OSError("database down")

        def totals_many(self, keys: object) -> dict[tuple[str, int], dict[str, int]]:
            raise OSError("database down")

        def __getattr__(self, name: str) -> object:
            raise AttributeError(name)

    fs = CgroupFS(tree, verify=False)
    write_events(tree / "gov/acme/web", oom_kill=2, oom=2)
    w = OomWatcher(fs, "gov", "n1", sink=DownSink())  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="governor.oom"):
        w.rescan(startup=True)
    w.close()
    groups = len(w.discover())
    assert groups >= 2
    msgs = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("stored OOM totals unreadable") for m in msgs) == 1, msgs
    assert w.db_write_errors == groups  # every group still counted


def test_rescan_leaves_watched_groups_alone_and_still_sees_a_new_incarnation(
        tree: Path) -> None:
    """Issue #16: a rescan looks only at groups it does not watch (the inode of every group
    every 2 s was a third of the daemon's CPU at 1,000 groups); a group removed and made
    again under its name ends its watch (IN_IGNORED) and is adopted as a new incarnation."""
    import shutil

    fs = CgroupFS(tree, verify=False)
    w = OomWatcher(fs, "gov", "n1", victim_wait=0.0)
    w.rescan(startup=True)
    old = w._groups["acme/web"].cgroup_id
    looked: list[str] = []
    real = fs.inode

    def counting(rel: str) -> int:
        looked.append(rel)
        return real(rel)

    fs.inode = counting  # type: ignore[method-assign]
    w.rescan()
    assert looked == []      # all three watched: none looked at again
    (tree / "gov/acme/new").mkdir()
    write_events(tree / "gov/acme/new")
    # made before the old one goes (tmpfs may hand a freed inode number out again; the
    # kernel's cgroup ids are never reused)
    (tree / "gov/acme/web.new").mkdir()
    write_events(tree / "gov/acme/web.new", oom_kill=1)
    shutil.rmtree(tree / "gov/acme/web")
    (tree / "gov/acme/web.new").rename(tree / "gov/acme/web")
    w.poll_once(0.5)         # the old watch's IN_IGNORED
    w.rescan()
    assert sorted(looked) == ["gov/acme/new", "gov/acme/web"]
    assert w._groups["acme/web"].cgroup_id != old
    assert w._groups["acme/web"].cgroup_id == real("gov/acme/web")
    assert "acme/new" in w._groups
    w.close()


def test_new_groups_and_tenants_are_seen_when_made_not_by_rescanning(tree: Path) -> None:
    """Issue #16: the watcher no longer lists every group every 2 s; inotify on the
    subtree's and the tenants' directories brings a rescan when a directory appears
    (the full rescan is a safety net, here never due), and stop() ends its wait at once."""
    fs = CgroupFS(tree, verify=False)
    w = OomWatcher(fs, "gov", "n1", rescan_interval=1000.0, poll_interval=1000.0)
    w.start()
    try:
        deadline = time.monotonic() + 10
        while len(w._dir_wds) < 2 and time.monotonic() < deadline:   # started
            time.sleep(0.01)
        assert sorted(w._dir_wds.values()) == ["", "acme"]
        # made whole elsewhere and moved in (a kernel's group has its files when it
        # appears): a group, then a new tenant with a group at once
        (tree / "new").mkdir()
        write_events(tree / "new")
        (tree / "new").rename(tree / "gov/acme/new")
        (tree / "beta/web").mkdir(parents=True)
        write_events(tree / "beta")
        write_events(tree / "beta/web")
        (tree / "beta").rename(tree / "gov/beta")
        while time.monotonic() < deadline and not {"acme/new", "beta", "beta/web"} <= set(
                w._groups):
            time.sleep(0.01)
        assert {"acme/new", "beta", "beta/web"} <= set(w._groups), sorted(w._groups)
        assert sorted(w._dir_wds.values()) == ["", "acme", "beta"]
    finally:
        t0 = time.monotonic()
        w.stop()
        stopped = time.monotonic() - t0
        w.close()
    assert w._thread is None and stopped < 2.0   # woken, not waiting out a poll


def test_groups_past_the_watch_limit_are_checked_with_each_pass_logged_once(
        tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue #16, 10,000 groups past fs.inotify.max_user_watches: the groups whose
    memory.events cannot be watched are one warning (not one per group), and in the
    daemon (``unwatched_from_samples``) they are checked with each sampling pass's
    counters, never read by the watcher itself every 0.5 s."""
    import errno
    import logging

    from governor.cgroupfs.reader import GroupStats

    fs = CgroupFS(tree, verify=False)
    for i in range(5):
        (tree / f"gov/acme/x{i}").mkdir()
        write_events(tree / f"gov/acme/x{i}")
    w = OomWatcher(fs, "gov", "n1", unwatched_from_samples=True)
    assert w.inotify is not None
    real_add = w.inotify.add

    def add(path: str, mask: int = 2) -> int:
        if "/x" in path and path.endswith("memory.events"):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_add(path, mask)

    w.inotify.add = add  # type: ignore[method-assign]
    got: list[OomEvent] = []
    w.listeners.append(got.append)
    with caplog.at_level(logging.WARNING, logger="governor.oom"):
        w.rescan(startup=True)
    warned = [r for r in caplog.records if "cannot watch memory.events" in r.getMessage()]
    assert len(warned) == 1 and warned[0].groups == 5   # type: ignore[attr-defined]
    assert w._unwatched == {f"acme/x{i}" for i in range(5)}
    reads: list[str] = []
    real_read = w._read_counters
    w._read_counters = lambda p: reads.append(p) or real_read(p)  # type: ignore[method-assign]
    write_events(tree / "gov/acme/x3", oom_kill=2, oom=2)
    w.poll_once(0.05)
    assert reads == [] and got == []   # not read by the watcher
    counters = {"low": 0, "high": 0, "max": 0, "oom": 2, "oom_kill": 2, "oom_group_kill": 0}
    w.on_sample({"acme/x3": GroupStats(cgroup_id=fs.inode("gov/acme/x3"),
                                       memory_events=counters)})
    w.poll_once(0.05)
    w.flush()
    assert sorted((e.group, e.kind, e.count) for e in got) == [
        ("x3", "oom", 2), ("x3", "oom_kill", 2)]
    w.on_sample({"acme/x3": GroupStats(cgroup_id=1, memory_events=counters)})
    assert w._fed == {}   # the same counters again are not even handed to the watcher
    w.poll_once(0.05)
    w.flush()
    assert len(got) == 2 and reads == []   # the same counters again: nothing new
    moved = {**counters, "oom": 3, "oom_kill": 3}
    w.on_sample({"acme/x3": GroupStats(cgroup_id=1, memory_events=dict(moved)),
                 "acme/x1": GroupStats(cgroup_id=1, memory_events=dict(counters))})
    assert set(w._fed) == {"acme/x3", "acme/x1"}   # moved, and first seen
    w.poll_once(0.05)
    w.flush()
    assert sorted((e.group, e.kind, e.count) for e in got[2:]) == [
        ("x1", "oom", 2), ("x1", "oom_kill", 2), ("x3", "oom", 1), ("x3", "oom_kill", 1)]
    w.close()


def test_each_pass_checks_the_pressure_thresholds_of_the_groups_that_have_them(
        tree: Path) -> None:
    """A pass's PSI averages against the policy's ``oom.pressure`` thresholds: a crossing
    is queued for the watcher's loop; a group without thresholds is not looked at (issue
    #16: only the groups with thresholds are walked each pass), and a new policy's
    thresholds apply from the next pass."""
    from governor.cgroupfs.parse import Psi, PsiLine
    from governor.cgroupfs.reader import GroupStats
    from governor.policy.model import OomSettings, PressureKey

    fs = CgroupFS(tree, verify=False)
    w = OomWatcher(fs, "gov", "n1")

    def stats(some10: float, some60: float) -> GroupStats:
        return GroupStats(cgroup_id=1, psi={"memory": Psi(
            PsiLine(some10, some60, 0.0, 1), PsiLine(0.0, 0.0, 0.0, 0))})

    hot = {"acme/a": stats(90.0, 50.0), "acme/b": stats(90.0, 50.0),
           "acme/c": stats(90.0, 50.0)}
    w.set_settings({"acme/a": OomSettings(pressure=((PressureKey.SOME_AVG60, 40.0),)),
                    "acme/b": OomSettings(),   # no thresholds: never checked
                    "acme/c": OomSettings(pressure=((PressureKey.SOME_AVG60, 60.0),))})
    assert set(w._with_pressure) == {"acme/a", "acme/c"}
    w.on_sample(hot)
    assert w._inbox == [("acme/a", "some_avg60 50.0 >= 40.0")]
    w._inbox.clear()
    w.on_sample({"acme/a": stats(1.0, 1.0)})   # below: nothing
    assert w._inbox == []
    w.set_settings({"acme/b": OomSettings(pressure=((PressureKey.SOME_AVG60, 10.0),))})
    w.on_sample(hot)
    assert w._inbox == [("acme/b", "some_avg60 50.0 >= 10.0")]
    w.close()


def test_the_events_listener_hears_watched_changed_and_unwatched(tree: Path) -> None:
    """What the watcher tells the daemon's sampler of its watches on memory.events: each
    watched group once watched, an event on a group's file as that group's change, a
    group's removal (its watch's IN_IGNORED) as unwatched, and every group unwatched when
    it stops."""
    import shutil

    heard: list[tuple[str, str | None]] = []

    class Listener:
        def watched(self, path: str) -> None:
            heard.append(("watched", path))

        def changed(self, path: str) -> None:
            heard.append(("changed", path))

        def unwatched(self, path: str | None) -> None:
            heard.append(("unwatched", path))

    fs = CgroupFS(tree, verify=False)
    w = OomWatcher(fs, "gov", "n1", victim_wait=0.0)
    w.events_listener = Listener()
    w.rescan(startup=True)
    assert sorted(heard) == [("watched", "acme"), ("watched", "acme/batch"),
                             ("watched", "acme/web")]
    heard.clear()
    write_events(tree / "gov/acme/web", high=2)
    w.poll_once(1.0)
    assert heard == [("changed", "acme/web")]
    heard.clear()
    w.poll_once(0.1)
    assert heard == []                    # nothing changed: nothing heard
    shutil.rmtree(tree / "gov/acme/batch")
    w.poll_once(1.0)                      # the watch's IN_IGNORED
    assert ("unwatched", "acme/batch") in heard
    assert not [h for h in heard if h[1] != "acme/batch"]
    heard.clear()
    w.stop()
    assert heard == [("unwatched", None)]
    w.close()


def test_an_unwatchable_group_is_never_told_watched(tree: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the inotify watch limit a group has no watch: the sampler must read its
    memory.events every pass, so the listener never hears of it."""
    import errno

    from governor.cgroupfs.inotify import Inotify

    real = Inotify.add

    def add(self: Inotify, path: str, *a: object, **kw: object) -> int:
        if path.endswith("web/memory.events"):
            raise OSError(errno.ENOSPC, "no watch left")
        return real(self, path, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Inotify, "add", add)
    heard: list[str] = []

    class Listener:
        def watched(self, path: str) -> None:
            heard.append(path)

        def changed(self, path: str) -> None:
            pass

        def unwatched(self, path: str | None) -> None:
            pass

    fs = CgroupFS(tree, verify=False)
    w = OomWatcher(fs, "gov", "n1", victim_wait=0.0, unwatched_from_samples=True)
    w.events_listener = Listener()
    w.rescan(startup=True)
    assert sorted(heard) == ["acme", "acme/batch"]
    w.close()
