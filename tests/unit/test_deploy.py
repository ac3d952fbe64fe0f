"""deploy/: the systemd unit and the Kubernetes DaemonSet are valid and say what
docs/operations.md says they do; their config and policy load with governor's own loaders."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from governor.config import load_config
from governor.policy import load_policy

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy/systemd/governor.service"
DAEMONSET = REPO / "deploy/kubernetes/daemonset.yaml"


def unit() -> configparser.ConfigParser:
    p = configparser.ConfigParser(strict=False, interpolation=None,
                                  comment_prefixes=("#", ";"))
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read_string(UNIT.read_text())
    return p


def test_unit_settings() -> None:
    u = unit()
    s, d = u["Service"], u["Unit"]
    assert s["Type"] == "simple"  # no sd_notify in governor
    assert s["ExecStart"] == "/usr/local/bin/governor run --config /etc/governor/config.toml"
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert s["Delegate"] == "yes" and s["Restart"] == "on-failure" and s["RestartSec"]
    assert s["LimitNOFILE"] == "1048576" and s["OOMScoreAdjust"] == "-1000"
    assert s["ProtectSystem"] == "strict"
    assert s["ReadWritePaths"].split() == ["/sys/fs/cgroup", "/var/lib/governor"]
    # nothing that would make cgroup writes, /proc or /dev/kmsg unusable
    for key in ("ProtectControlGroups", "ProtectKernelLogs", "PrivateDevices", "ProtectProc"):
        assert key not in s
    assert "network-online.target" in d["After"] and "local-fs.target" in d["After"]
    assert u["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed on this host")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart exists: point it at this checkout's governor
    exe = REPO / ".venv/bin/governor"
    if not exe.exists():
        pytest.skip(f"{exe} missing (run scripts/setup.sh)")
    f = tmp_path / "governor.service"
    f.write_text(UNIT.read_text().replace("/usr/local/bin/governor", str(exe)))
    r = subprocess.run(["systemd-analyze", "verify", str(f)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stderr


def docs() -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml", reason="PyYAML (the dev extra) is not installed")
    return [d for d in yaml.safe_load_all(DAEMONSET.read_text()) if d]


def by_kind(kind: str, name: str | None = None) -> dict[str, Any]:
    return next(d for d in docs() if d["kind"] == kind
                and (name is None or d["metadata"]["name"] == name))


def test_daemonset_privileges_mounts_probe_and_secret() -> None:
    ds = by_kind("DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    (c,) = spec["containers"]
    assert c["securityContext"]["privileged"] is True
    assert c["args"] == ["run", "--config", "/etc/governor/config.toml"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/sys/fs/cgroup"]["name"]]["hostPath"]["path"] == "/sys/fs/cgroup"
    assert "readOnly" not in mounts["/sys/fs/cgroup"]  # governor writes the tree
    assert volumes[mounts["/dev/kmsg"]["name"]]["hostPath"]["type"] == "CharDevice"
    assert volumes[mounts["/etc/governor/policy.d"]["name"]]["configMap"]["name"] == \
        "governor-policy"
    assert volumes[mounts["/etc/governor/config.toml"]["name"]]["configMap"]["name"] == \
        "governor-config"
    env = {e["name"]: e for e in c["env"]}
    assert env["GOVERNOR_DATABASE"]["valueFrom"]["secretKeyRef"] == {"name": "governor-db",
                                                                      "key": "url"}
    assert env["GOVERNOR_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    (port,) = c["ports"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    # the metrics port is the one the config listens on, on all interfaces
    cfg = by_kind("ConfigMap", "governor-config")["data"]["config.toml"]
    assert 'listen = "0.0.0.0:9717"' in cfg and port["containerPort"] == 9717


def test_daemonset_config_and_policy_load(tmp_path: Path) -> None:
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text(by_kind("ConfigMap", "governor-config")["data"]["config.toml"])
    cfg = load_config(cfg_file, environ={
        "GOVERNOR_NODE": "node-7",
        "GOVERNOR_DATABASE": "postgresql+psycopg://governor@pg.example/governor"})
    assert cfg.node == "node-7" and cfg.database_url.startswith("postgresql")
    assert cfg.listen == "0.0.0.0:9717" and cfg.log_format == "json"
    pol_dir = tmp_path / "policy.d"
    pol_dir.mkdir()
    for name, text in by_kind("ConfigMap", "governor-policy")["data"].items():
        (pol_dir / name).write_text(text)
    pol = load_policy([pol_dir])
    assert sorted(pol.tenants) == ["acme"] and "web" in pol.tenants["acme"].groups
