"""``governor demo``: a scripted tour on a real cgroup v2 kernel.

Two tenants (``governor/data/demo-policy.toml``, shipped in the wheel), ``governor run``
in the background with a 2 s sampling interval and a fresh SQLite database, a CPU burner
and an IO writer started with ``governor launch``, the CPU cap measured, an OOM kill
provoked and found in ``governor events``, a few ``/metrics`` lines, and the bill.  Every
step prints a heading;
a step that fails stops the tour with exit code 1 (after cleaning up); the tour is bounded
by ``--budget``.

Where this host has no usable cgroup v2 (or we are not root), the demo re-runs itself
inside the sandbox VM (``governor sandbox exec --mem 2048 -- governor demo``) and says so
on its first line.  It works in a subtree of its own (``governor-demo-XXXXXX``) which it
removes at the end, processes included.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from governor.errors import GovernorError

T = TypeVar("T")

#: the demo policy is package data (in the wheel), so `governor demo` works from any directory
#: after `pip install .`, not only from a source checkout
DEMO_POLICY = Path(__file__).resolve().parent / "data" / "demo-policy.toml"
#: the CPU cap of acme/batch in the demo policy, in cores
CPU_CAP = 0.5
#: tolerance on the cap: cpu.max is enforced per 100 ms period, our reads are 5 s apart
CAP_SLACK = 0.10


class StepFailed(GovernorError):
    exit_code = 1


def cgroup2_reason() -> str | None:
    """None when this process can govern cgroup v2 here, else why not."""
    from governor.cgroupfs.mount import find_cgroup2

    if os.geteuid() != 0:
        return "not running as root"
    try:
        find_cgroup2()
    except GovernorError as e:
        return str(e).split(". Fix:")[0]
    return None


def sandbox_argv(args: list[str], budget: float) -> list[str]:
    return [sys.executable, "-m", "governor", "sandbox", "exec", "--mem", "2048",
            "--timeout", str(int(budget + 300)), "--",
            sys.executable, "-m", "governor", "demo", *args]


class Tour:
    def __init__(self, *, budget: float, policy: Path) -> None:
        self.deadline = time.monotonic() + budget
        self.policy = policy
        self.step_no = 0
        self.tmp = Path(tempfile.mkdtemp(prefix="governor-demo-"))
        self.subtree = f"governor-demo-{secrets.token_hex(3)}"
        self.port = free_port()
        self.config = self.tmp / "config.toml"
        self.database = f"sqlite:///{self.tmp}/governor.db"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.background: list[subprocess.Popen[bytes]] = []
        self.start = datetime.now(UTC).replace(microsecond=0)

    # -- helpers -------------------------------------------------------------------------
    def heading(self, title: str) -> None:
        self.step_no += 1
        click.secho(f"\n== step {self.step_no}: {title}", bold=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def wait(self, what: str, pred: Callable[[], T | None], limit: float) -> T:
        end = min(time.monotonic() + limit, self.deadline)
        while True:
            got = pred()
            if got is not None and got is not False:
                return got
            if time.monotonic() > end:
                raise StepFailed(f"timed out after {limit:g}s waiting for {what}")
            self.check_daemon()
            time.sleep(0.5)

    def check_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is not None:
            raise StepFailed(f"governor run exited with {self.daemon.returncode}:\n"
                             + self.log_tail())

    def log_tail(self, n: int = 20) -> str:
        p = self.tmp / "governor.log"
        return "\n".join(p.read_text(errors="replace").splitlines()[-n:]) if p.exists() else ""

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "governor", *args]

    def show(self, args: list[str]) -> None:
        click.secho("$ governor " + shlex.join(args), fg="cyan")

    def gov(self, *args: str, check: bool = True, capture: bool = False,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``governor ARGS`` (shown first), output to ours unless captured."""
        self.show(list(args))
        try:
            r = subprocess.run(self.argv(*args), text=True, check=False,
                               capture_output=capture, timeout=min(timeout, max(self.left(), 1)))
        except subprocess.TimeoutExpired as e:
            raise StepFailed(f"governor {args[0]} did not finish in {e.timeout:g}s") from e
        if check and r.returncode != 0:
            raise StepFailed(f"governor {' '.join(args)} exited with {r.returncode}"
                             + (f": {r.stderr.strip()}" if capture else ""))
        return r

    def launch(self, tenant: str, group: str, *command: str) -> subprocess.Popen[bytes]:
        args = ["launch", "--config", str(self.config), "-t", tenant, "-g", group, "--",
                *command]
        self.show(args)
        p = subprocess.Popen(self.argv(*args), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.background.append(p)
        return p

    def kernel(self, path: str, file: str) -> str:
        from governor.config import load_config
        from governor.driver import open_cgroup

        with open_cgroup(load_config(self.config)) as fs:
            return fs.read(f"{self.subtree}/{path}", file)

    # -- steps ---------------------------------------------------------------------------
    def setup(self) -> None:
        self.heading("set-up: the demo policy (two tenants), a config, a fresh database")
        if not self.policy.is_file():
            raise StepFailed(f"{self.policy}: the demo policy is missing (reinstall governor, "
                             "or pass --policy FILE)")
        (self.tmp / "state").mkdir()
        self.config.write_text(
            "[governor]\n"
            f'subtree = "{self.subtree}"\n'
            f'policy = "{self.policy}"\n'
            f'state_dir = "{self.tmp}/state"\n'
            "[database]\n"
            f'url = "{self.database}"\n'
            "[sampling]\n"
            'interval = "2s"\n'
            "[exporter]\n"
            f'listen = "127.0.0.1:{self.port}"\n')
        click.echo(f"policy {self.policy}, subtree {self.subtree}, database {self.database}")
        self.gov("policy", "check", str(self.policy))
        self.gov("db", "upgrade", "--config", str(self.config))

    def start_daemon(self) -> None:
        self.heading("start the governor (sampling every 2 s) in the background")
        args = ["run", "--config", str(self.config), "--sample-interval", "2s"]
        self.show(args)
        log = (self.tmp / "governor.log").open("wb")
        self.daemon = subprocess.Popen(self.argv(*args), stdout=log, stderr=log)
        self.wait("the groups to exist and /healthz to answer",
                  lambda: self.healthy() and all(
                      self.exists(p) for p in ("acme/batch", "acme/files", "globex/cache")),
                  120)
        click.echo(f"governor run is up (pid {self.daemon.pid}); groups created: "
                   "acme/batch acme/files globex/cache; cpu.max of acme/batch: "
                   f"{self.kernel('acme/batch', 'cpu.max').strip()}")

    def exists(self, path: str) -> bool:
        return (self.cgroup_root() / self.subtree / path).is_dir()

    def cgroup_root(self) -> Path:
        from governor.cgroupfs.mount import find_cgroup2

        return find_cgroup2()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                        timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def workload(self) -> None:
        self.heading("a workload: a CPU burner in acme/batch, an IO writer in acme/files")
        self.launch("acme", "batch", "sh", "-c", "while :; do :; done")
        target = ("/dev/vda" if os.environ.get("GOVERNOR_SANDBOX") == "1"
                  and Path("/dev/vda").exists() else str(self.tmp / "io.data"))
        flag = "oflag=direct" if target == "/dev/vda" else "conv=fsync"
        self.launch("acme", "files", "sh", "-c",
                    f"while :; do dd if=/dev/zero of={target} bs=1M count=32 {flag} "
                    "status=none; sleep 1; done")
        self.wait("both processes in their groups", lambda: all(
            self.kernel(p, "cgroup.procs").strip() for p in ("acme/batch", "acme/files")),
            180)  # each `governor launch` is a Python start-up: tens of seconds under TCG
        click.echo(f"running (IO to {target})")

    def cap(self) -> None:
        self.heading(f"a limit enforced: cpu.max caps acme/batch at {CPU_CAP} cores")
        r = self.gov("status", "--config", str(self.config), "--format", "json",
                     "--interval", "5s", capture=True)
        doc = json.loads(r.stdout)
        from rich.console import Console

        from governor.status.render import table
        from governor.status.view import Row

        rs = [Row.from_dict(g) for g in doc["groups"]]
        Console(width=150).print(table(rs, sort="cpu"))
        batch = {x.path: x for x in rs}["acme/batch"]
        files = {x.path: x for x in rs}["acme/files"]
        if batch.cpu_percent is None:
            raise StepFailed(f"no CPU figure for acme/batch: {batch}")
        cores = batch.cpu_percent / 100
        throttled = self.kernel("acme/batch", "cpu.stat")
        nr = dict(line.split() for line in throttled.splitlines()).get("nr_throttled", "?")
        click.echo(f"acme/batch used {cores:.2f} cores over {batch.interval_s}s "
                   f"(cap {CPU_CAP}; throttled in {nr} periods so far); acme/files wrote "
                   f"{(files.io_write_bytes_per_s or 0) / 2**20:.1f} MiB/s")
        if not 0.05 <= cores <= CPU_CAP + CAP_SLACK:
            raise StepFailed(f"acme/batch used {cores:.2f} cores: expected the burner to "
                             f"run and stay under the cap of {CPU_CAP}")

    def oom(self) -> None:
        self.heading("an OOM kill: 128 MiB allocated in globex/cache (memory.max 32M, "
                     "no swap)")
        p = self.launch("globex", "cache", "dd", "if=/dev/zero", "of=/dev/null", "bs=128M",
                        "count=1")
        try:
            rc = p.wait(timeout=max(min(120, self.left()), 1))
        except subprocess.TimeoutExpired as e:
            raise StepFailed("the allocation in globex/cache did not end") from e
        events = self.kernel("globex/cache", "memory.events")
        kills = int(dict(line.split() for line in events.splitlines())["oom_kill"])
        click.echo(f"governor launch exited {rc} (128+9: SIGKILL); the kernel's "
                   f"memory.events of globex/cache says oom_kill {kills}")
        if kills < 1:
            raise StepFailed("no OOM kill in globex/cache's memory.events")
        self.wait("the OOM kill in the database", self.oom_recorded, 60)
        self.gov("events", "--config", str(self.config), "--tenant", "globex")

    def oom_recorded(self) -> bool:
        from governor.oom.store import query_events
        from governor.store.db import make_engine, session_factory

        engine = make_engine(self.database)
        try:
            with session_factory(engine)() as session:
                rows = query_events(session=session, tenant="globex", kind="oom_kill")
        finally:
            engine.dispose()
        return any(r["group"] == "cache" for r in rows)

    def metrics(self) -> None:
        self.heading(f"metrics: http://127.0.0.1:{self.port}/metrics (a few lines)")
        wanted = ("governor_cpu_usage_seconds_total", "governor_cpu_throttled_periods_total",
                  "governor_memory_max_bytes", "governor_oom_kills_total",
                  "governor_io_written_bytes_total")

        def lines() -> list[str] | None:
            body = fetch(f"http://127.0.0.1:{self.port}/metrics")
            out = [x for x in body.splitlines() if x.startswith(wanted)
                   and 'group="' in x and 'group=""' not in x]
            kills = [x for x in out if x.startswith("governor_oom_kills_total")
                     and 'group="cache"' in x]
            return out if kills and float(kills[0].rsplit(" ", 1)[1]) >= 1 else None

        out = self.wait("governor_oom_kills_total of globex/cache >= 1 on /metrics", lines, 30)
        click.secho(f"$ curl -s http://127.0.0.1:{self.port}/metrics | grep 'group=\"'",
                    fg="cyan")
        for x in out:
            click.echo(x)

    def bill(self) -> None:
        self.heading("the bill (governor stopped first: its last samples are stored)")
        self.stop_daemon()
        now = datetime.now(UTC).replace(microsecond=0)
        frm, to = self.start.isoformat(), now.isoformat()
        self.gov("bill", "--config", str(self.config), "--from", frm, "--to", to)
        r = self.gov("bill", "--config", str(self.config), "--from", frm, "--to", to,
                     "--format", "json", capture=True)
        invoices = json.loads(r.stdout)
        cpu = sum(float(line["quantity"]) for inv in invoices for line in inv["lines"]
                  if line["resource"] == "cpu" and inv["tenant"] == "acme"
                  and line["group"] == "batch")
        kills = sum(float(line["quantity"]) for inv in invoices for line in inv["lines"]
                    if line["resource"] == "oom_kill")
        total = ", ".join(f"{inv['tenant']} {inv['total']} {inv['currency']}"
                          for inv in invoices)
        click.echo(f"billed: acme/batch CPU {cpu * 3600:.1f} core-seconds, OOM kills "
                   f"{kills:g}; totals: {total}")
        if cpu <= 0:
            raise StepFailed("the bill has no CPU for acme/batch")

    # -- clean-up ------------------------------------------------------------------------
    def stop_daemon(self) -> None:
        if self.daemon is None or self.daemon.poll() is not None:
            return
        self.daemon.send_signal(signal.SIGTERM)
        try:
            rc = self.daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            raise StepFailed("governor run did not stop within 60 s of SIGTERM") from None
        if rc != 0:
            raise StepFailed(f"governor run exited with {rc}:\n{self.log_tail()}")
        click.echo("governor run stopped (exit 0)")

    def cleanup(self) -> None:
        with contextlib.suppress(StepFailed):
            self.stop_daemon()
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
        top = self.cgroup_root() / self.subtree
        with contextlib.suppress(OSError):
            (top / "cgroup.kill").write_text("1")
        for p in self.background:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        for d in sorted(_groups(top), key=lambda x: -len(x.parts)):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _groups(top: Path) -> Iterator[Path]:
    if top.is_dir():
        yield top
        for dirpath, dirnames, _ in os.walk(top):
            for d in dirnames:
                yield Path(dirpath) / d


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 (our own loopback URL)
        return str(r.read().decode())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_tour(*, budget: float, policy: Path) -> int:
    tour = Tour(budget=budget, policy=policy)
    t0 = time.monotonic()
    steps: list[Callable[[], Any]] = [tour.setup, tour.start_daemon, tour.workload, tour.cap,
                                      tour.oom, tour.metrics, tour.bill]
    try:
        for step in steps:
            if tour.left() <= 0:
                raise StepFailed(f"the tour's budget of {budget:g}s is spent")
            step()
    except StepFailed as e:
        click.secho(f"\ndemo FAILED at step {tour.step_no}: {e}", fg="red", err=True)
        if tour.daemon is not None:
            click.echo(f"governor log (last lines):\n{tour.log_tail()}", err=True)
        return 1
    finally:
        tour.cleanup()
    click.secho(f"\ndemo finished: all {len(steps)} steps passed in "
                f"{time.monotonic() - t0:.0f}s", bold=True)
    return 0


def register(main: click.Group) -> None:
    @main.command("demo")
    @click.option("--budget", default=480.0, show_default=True, type=click.FloatRange(30),
                  help="seconds the whole tour may take")
    @click.option("--policy", type=click.Path(dir_okay=False, path_type=Path),
                  default=DEMO_POLICY, show_default=True, help="the demo policy")
    @click.option("--sandbox", "force_sandbox", is_flag=True,
                  help="run in the sandbox VM even where cgroup v2 is usable")
    def demo_cmd(budget: float, policy: Path, force_sandbox: bool) -> None:
        """A scripted tour: two tenants, a workload, a CPU cap enforced, an OOM kill caught,
        metrics and the bill.  Re-runs itself in the sandbox VM without usable cgroup v2."""
        reason = "--sandbox given" if force_sandbox else cgroup2_reason()
        if os.environ.get("GOVERNOR_SANDBOX") == "1":
            reason = cgroup2_reason()  # inside the VM: never recurse
            if reason is not None:
                raise StepFailed(f"no usable cgroup v2 inside the sandbox: {reason}")
        if reason is not None:
            args = ["--budget", f"{budget:g}", "--policy", str(policy.resolve())]
            click.echo(f"governor demo: {reason}: running inside the sandbox VM "
                       f"(governor sandbox exec --mem 2048 -- governor demo)", nl=True)
            sys.stdout.flush()
            sys.exit(subprocess.run(sandbox_argv(args, budget), check=False).returncode)
        click.echo("governor demo: cgroup v2 is usable here: running natively in a "
                   "throwaway subtree")
        sys.exit(run_tour(budget=budget, policy=policy.resolve()))
