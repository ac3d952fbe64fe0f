"""The governor's own families (governor/exporter/process.py) and how /metrics serves them.

Each collector test makes its own CollectorRegistry and asserts with ``get_sample_value``,
as client_python's own tests do; the process collector reads a fake procfs fed with a
real kernel's lines.  The served exposition is parsed with prometheus-client's parser and,
when promtool is installed, checked by ``promtool check metrics``.
"""

from __future__ import annotations

import gzip
import os
import platform
import resource
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from governor import __version__
from governor.exporter.process import FAMILIES, BuildCollector, OwnMetrics
from governor.exporter.render import ALL_METRICS, render
from governor.exporter.server import Exporter
from tests.helpers.exposition import parsed_samples, snapshot
from tests.unit.procfs_fake import REAL_STAT

DIGEST = "3f" * 32
LIMITS = ("Limit                     Soft Limit           Hard Limit           Units     \n"
          "Max cpu time              unlimited            unlimited            seconds   \n"
          "Max open files            20000                20000                files     \n")


def fake_proc(root: Path, *, fds: int = 3) -> Path:
    """``root/stat`` (btime) and ``root/self/{stat,limits,fd/}``: a process with a comm
    holding a space and a ")" (the collector splits on the last one), 1234 + 566 ticks
    of CPU, 30000 resident pages."""
    fields = REAL_STAT.split(") ", 1)[1].split()
    # after the comm: [11] utime, [12] stime, [19] starttime (ticks), [20] vsize, [21] rss
    fields[11], fields[12], fields[19], fields[20], fields[21] = \
        "1234", "566", "107672", "987654144", "30000"
    (root / "self" / "fd").mkdir(parents=True)
    (root / "stat").write_text("cpu  1 2 3 4\nbtime 1700000000\nprocesses 10\n")
    (root / "self" / "stat").write_text("4242 (gov (run)) " + " ".join(fields) + "\n")
    (root / "self" / "limits").write_text(LIMITS)
    for i in range(fds):
        (root / "self" / "fd" / str(i)).touch()
    return root


def test_build_info_and_policy_info() -> None:
    reg = CollectorRegistry()
    digest: list[str | None] = [None]
    BuildCollector(node="n1", policy=lambda: digest[0], accelerators=lambda: ["a", "b"],
                   python="3.11.7", registry=reg)
    labels = {"version": __version__, "python": "3.11.7", "accelerators": "a,b",
              "node": "n1"}
    assert reg.get_sample_value("governor_build_info", labels) == 1.0
    # no policy loaded yet: no series (missing is not zero)
    assert reg.get_sample_value("governor_policy_info", {"digest": DIGEST, "node": "n1"}) \
        is None
    assert not [m for m in reg.collect() if m.name == "governor_policy"]
    digest[0] = DIGEST   # built fresh at each collect: the next one shows it
    assert reg.get_sample_value("governor_policy_info", {"digest": DIGEST, "node": "n1"}) \
        == 1.0


def test_build_info_defaults_name_this_python_and_the_loaded_accelerators() -> None:
    from governor import accel

    reg = CollectorRegistry()
    BuildCollector(node="n1", policy=lambda: None, registry=reg)
    [fam] = [m for m in reg.collect() if m.name == "governor_build"]
    [s] = fam.samples
    assert s.labels["python"] == platform.python_version()
    assert s.labels["accelerators"] == ",".join(accel.loaded())


def test_process_families_from_a_fake_procfs(tmp_path: Path) -> None:
    own = OwnMetrics(node="n1", proc_root=str(fake_proc(tmp_path, fds=3)))
    own.policy_digest = DIGEST
    get = own.registry.get_sample_value
    ticks = os.sysconf("SC_CLK_TCK")
    assert get("process_cpu_seconds_total") == pytest.approx((1234 + 566) / ticks)
    assert get("process_resident_memory_bytes") == 30000 * resource.getpagesize()
    assert get("process_virtual_memory_bytes") == 987654144
    assert get("process_start_time_seconds") == pytest.approx(1700000000 + 107672 / ticks)
    assert get("process_open_fds") == 3
    assert get("process_max_fds") == 20000
    assert get("python_info", {"implementation": platform.python_implementation(),
                               "major": str(__import__("sys").version_info.major),
                               "minor": str(__import__("sys").version_info.minor),
                               "patchlevel": platform.python_version_tuple()[2],
                               "version": platform.python_version()}) == 1.0
    assert get("governor_policy_info", {"digest": DIGEST, "node": "n1"}) == 1.0


def test_no_procfs_means_no_process_series(tmp_path: Path) -> None:
    # an unreadable procfs costs the process_* series, never the scrape
    own = OwnMetrics(node="n1", proc_root=str(tmp_path / "absent"))
    names = {f.name for f in text_string_to_metric_families(own.exposition().decode())}
    assert "governor_build_info" in names and not any(n.startswith("process_") for n in names)


def test_own_families_never_clash_with_the_rendered_ones() -> None:
    rendered = {m.name for m in ALL_METRICS}
    assert not rendered & set(FAMILIES)
    assert not {n.removesuffix("_total") for n in rendered} & set(FAMILIES)


# --- served on /metrics -------------------------------------------------------------------

@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[Exporter]:
    exp = Exporter("127.0.0.1:0", own=OwnMetrics(node="node-1",
                                                 proc_root=str(fake_proc(tmp_path))))
    exp.start()
    try:
        yield exp
    finally:
        exp.stop()


def scrape(exp: Exporter, *, gz: bool) -> str:
    headers = {"Accept-Encoding": "gzip"} if gz else {}
    with urllib.request.urlopen(urllib.request.Request(exp.url + "/metrics",
                                                       headers=headers), timeout=10) as r:
        body = r.read()
        assert int(r.headers["Content-Length"]) == len(body)
    # gzip: the pass's member, then the scrape's own (gzip.decompress reads every member)
    return (gzip.decompress(body) if gz else body).decode()


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_metrics_has_the_groups_then_the_own_families(exporter: Exporter, gz: bool) -> None:
    snap = snapshot(20, tenants=3)
    rendered = render(snap)
    exporter.publish(rendered)
    exporter.set_policy(DIGEST)
    text = scrape(exporter, gz=gz)
    assert text.startswith(rendered.decode())   # the pass's bytes, untouched
    got = parsed_samples(text)                    # raises on a duplicate series
    want = parsed_samples(rendered.decode())
    assert {k: v for k, v in got.items() if k in want} == want
    assert got[("governor_policy_info", (("digest", DIGEST), ("node", "node-1")))] == 1.0
    assert got[("process_open_fds", ())] == 3
    [build] = [k for k in got if k[0] == "governor_build_info"]
    assert dict(build[1])["node"] == "node-1" and dict(build[1])["version"] == __version__
    assert "# EOF" not in text   # the 0.0.4 text format: nothing ends the exposition early


def test_own_families_are_made_at_each_scrape(exporter: Exporter) -> None:
    exporter.publish(render(snapshot(2, tenants=1)))
    assert "governor_policy_info" not in scrape(exporter, gz=True)
    exporter.set_policy(DIGEST)   # no new pass published: the next scrape shows it
    assert f'digest="{DIGEST}"' in scrape(exporter, gz=True)
    assert f'digest="{DIGEST}"' in scrape(exporter, gz=False)


def test_metrics_before_the_first_pass(exporter: Exporter) -> None:
    names = {f.name for f in text_string_to_metric_families(scrape(exporter, gz=False))}
    assert {"governor_build_info", "process_cpu_seconds", "python_info"} <= names


def test_from_config_serves_them_when_asked(tmp_path: Path) -> None:
    from governor.config import load_config

    p = tmp_path / "c.toml"
    p.write_text('[governor]\nnode = "n9"\n[exporter]\nlisten = "127.0.0.1:19717"\n')
    cfg = load_config(p, environ={})
    assert Exporter.from_config(cfg).own is None   # what is published, and only that
    exp = Exporter.from_config(cfg, own_metrics=True)
    assert exp.own is not None
    exp.set_policy(DIGEST)
    assert exp.own.registry.get_sample_value("governor_policy_info",
                                             {"digest": DIGEST, "node": "n9"}) == 1.0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_exposition(exporter: Exporter) -> None:
    exporter.publish(render(snapshot(20, tenants=3)))
    exporter.set_policy(DIGEST)
    for gz in (False, True):
        r = subprocess.run(["promtool", "check", "metrics"], input=scrape(exporter, gz=gz),
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
