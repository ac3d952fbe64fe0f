"""deploy/: the systemd unit and the Kubernetes DaemonSet are valid and say what
docs/operations.md says they do; their config and policy load with governor's own loaders.

The container image (deploy/docker/Dockerfile) is built only with GOVERNOR_IMAGE_BUILD=1
(2 to 4 minutes: a Debian 12 base made by mmdebstrap, then buildah), see
test_image_builds_and_runs."""

from __future__ import annotations

import configparser
import copy
import os
import re
import shlex
import shutil
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from governor.config import SCHEMA, load_config
from governor.placement.procfs import Proc
from governor.placement.rules import ContainerView, Exclusions, RuleSet
from governor.policy import load_policy
from governor.policy.loader import parse_policy
from tests.unit.procfs_fake import HOST_NS, add_process

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy/systemd/governor.service"
DAEMONSET = REPO / "deploy/kubernetes/daemonset.yaml"
MANIFESTS = sorted((REPO / "deploy/kubernetes").glob("*.yaml"))
DOCKERFILE = REPO / "deploy/docker/Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
#: the Kubernetes versions the manifests are validated against (the schemas that
#: kubernetes-validate ships; docs/operations.md states the same range)
K8S_VERSIONS = ("1.30", "1.34")


def unit() -> configparser.ConfigParser:
    p = configparser.ConfigParser(strict=False, interpolation=None,
                                  comment_prefixes=("#", ";"))
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read_string(UNIT.read_text())
    return p


def test_unit_settings() -> None:
    u = unit()
    s, d = u["Service"], u["Unit"]
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"  # governor/sdnotify.py
    assert s["WatchdogSec"] == "60s"
    assert s["ExecStart"] == "/usr/local/bin/governor run --config /etc/governor/config.toml"
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert s["Restart"] == "on-failure" and s["RestartSec"]
    # the tenants live in slices of their own: stopping the unit ends the daemon's own
    # processes only (never mixed, which is how tenants below the unit used to die)
    assert s["KillMode"] == "control-group"
    assert s["Delegate"] == "yes"   # keep_warm writes the daemon's own cgroup.procs
    assert s["MemoryMin"] == "64M" and s["CPUWeight"] == "1000"
    assert s["LimitNOFILE"] == "1048576" and s["OOMScoreAdjust"] == "-1000"
    text = UNIT.read_text()
    assert "self_cgroup" not in text and "governor.service/tenants" not in text
    assert 'cgroup_driver = "systemd"' in text
    assert s["ProtectSystem"] == "strict"
    assert s["ReadWritePaths"].split() == ["/sys/fs/cgroup", "/var/lib/governor"]
    # nothing that would make cgroup writes, /proc or /dev/kmsg unusable
    for key in ("ProtectControlGroups", "ProtectKernelLogs", "PrivateDevices", "ProtectProc"):
        assert key not in s
    assert "network-online.target" in d["After"] and "local-fs.target" in d["After"]
    assert u["Install"]["WantedBy"] == "multi-user.target"


def multi(u: configparser.ConfigParser, key: str) -> list[str]:
    """Every assignment of a key the unit sets more than once, split on blanks."""
    out: list[str] = []
    for line in UNIT.read_text().splitlines():
        k, sep, v = line.partition("=")
        if sep and k.strip() == key:
            out += v.split()
    return out


def test_unit_hardening() -> None:
    u = unit()
    s = u["Service"]
    # exactly the capabilities the daemon uses (each one's reason is in the unit)
    assert set(multi(u, "CapabilityBoundingSet")) == {
        "CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_SYSLOG", "CAP_SYS_RESOURCE", "CAP_SYS_NICE"}
    assert multi(u, "SystemCallFilter") == ["@system-service", "~@privileged"]
    assert s["SystemCallErrorNumber"] == "EPERM" and s["SystemCallArchitectures"] == "native"
    assert s["NoNewPrivileges"] == "yes" and s["RestrictNamespaces"] == "yes"
    assert s["DevicePolicy"] == "closed" and s["DeviceAllow"] == "/dev/kmsg r"
    for key in ("ProtectKernelTunables", "ProtectKernelModules", "ProtectClock",
                "ProtectHostname", "PrivateTmp", "PrivateMounts", "LockPersonality",
                "RestrictRealtime", "RestrictSUIDSGID"):
        assert s[key] == "yes", key
    assert set(s["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6",
                                                         "AF_NETLINK"}
    # nothing known to break cgroup writes, /proc, /dev/kmsg, the network or D-Bus
    for key in ("ProtectControlGroups", "ProtectKernelLogs", "PrivateDevices", "ProtectProc",
                "ProcSubset", "PrivateNetwork", "IPAddressDeny", "PrivateUsers", "User",
                "DynamicUser", "MemoryDenyWriteExecute", "ProtectSystem=full"):
        assert key not in s, key
    assert "@mount" not in multi(u, "SystemCallFilter")   # favordynmods: a drop-in


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed on this host")
def test_unit_security_exposure(tmp_path: Path) -> None:
    exe = REPO / ".venv/bin/governor"
    if not exe.exists():
        pytest.skip(f"{exe} missing (run scripts/setup.sh)")
    f = tmp_path / "governor.service"
    f.write_text(UNIT.read_text().replace("/usr/local/bin/governor", str(exe)))
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(f)],
                       capture_output=True, text=True, check=False)
    if "--offline" in r.stderr and "unrecognized" in r.stderr:
        pytest.skip("systemd-analyze security has no --offline (systemd < 250)")
    m = re.search(r"Overall exposure level for governor.service: ([0-9.]+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= 3.5, r.stdout   # 7.2 before the hardening (docs/operations.md)


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


# --- Kubernetes: deploy/kubernetes/*.yaml -------------------------------------------------

def load_docs(path: Path) -> list[dict[str, Any]]:
    yaml = pytest.importorskip("yaml", reason="PyYAML (the dev extra) is not installed")
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def docs() -> list[dict[str, Any]]:
    return load_docs(DAEMONSET)


def by_kind(kind: str, name: str | None = None) -> dict[str, Any]:
    return next(d for d in docs() if d["kind"] == kind
                and (name is None or d["metadata"]["name"] == name))


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = by_kind("DaemonSet")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (c,) = pod_spec()["containers"]
    return c


def host_path_at(mount_path: str) -> dict[str, Any]:
    """The hostPath volume mounted at ``mount_path`` in the governor container."""
    mounts = {m["mountPath"]: m for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    hp: dict[str, Any] = volumes[mounts[mount_path]["name"]]["hostPath"]
    return hp


def test_manifests_found() -> None:
    names = [p.name for p in MANIFESTS]
    assert "daemonset.yaml" in names and "db-upgrade-job.yaml" in names


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schema(version: str) -> None:
    """Every document of deploy/kubernetes/*.yaml against the OpenAPI-derived JSON schema
    of that Kubernetes version, strict (an unknown or misspelt field is an error), offline:
    kubernetes-validate ships the schemas."""
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate (the dev extra) is not installed")
    n = 0
    for path in MANIFESTS:
        for doc in load_docs(path):
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: "
                            f"{where}: {e.message} (Kubernetes {version})")
            except kv.SchemaNotFoundError as e:
                pytest.fail(f"{path.name}: {e.message}")
            n += 1
    assert n == 5  # Namespace, 2 ConfigMaps, DaemonSet; the Job


def test_schema_validation_is_strict() -> None:
    """The validation above rejects what the API server would: a misspelt field, a wrong
    type (so that a passing validation means something)."""
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate (the dev extra) is not installed")
    ds = by_kind("DaemonSet")
    kv.validate(ds, K8S_VERSIONS[0], strict=True)
    typo = copy.deepcopy(ds)
    typo["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kv.ValidationError, match="hostPid"):
        kv.validate(typo, K8S_VERSIONS[0], strict=True)
    wrong = copy.deepcopy(ds)
    wrong["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = "yes"
    with pytest.raises(kv.ValidationError, match="boolean"):
        kv.validate(wrong, K8S_VERSIONS[0], strict=True)


def test_daemonset_privileges_mounts_probe_and_secret() -> None:
    spec = pod_spec()
    # the node's pid namespace (/proc, systemd's PIDs, the connector's initial-pid-namespace
    # check) and network namespace (connector events are sent in the initial one only)
    assert spec["hostPID"] is True and spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    c = container()
    assert c["securityContext"]["privileged"] is True
    assert c["securityContext"]["runAsUser"] == 0
    # the node's cgroup namespace is joined before governor runs: host paths in
    # /proc/PID/cgroup whatever the runtime does (hostPID: /proc/1 is the node's init)
    assert c["command"] == ["nsenter", "--cgroup=/proc/1/ns/cgroup", "--",
                            "/usr/local/bin/governor"]
    assert c["args"] == ["run", "--config", "/etc/governor/config.toml"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert host_path_at("/sys/fs/cgroup") == {"path": "/sys/fs/cgroup", "type": "Directory"}
    assert "readOnly" not in mounts["/sys/fs/cgroup"]  # governor writes the tree
    assert host_path_at("/dev/kmsg")["type"] == "CharDevice"
    # systemd's D-Bus API at the path governor's systemd driver connects to, and
    # /run/systemd/system for sd_booted: both the node's, at the same paths
    assert host_path_at("/run/dbus") == {"path": "/run/dbus", "type": "Directory"}
    assert "readOnly" not in mounts["/run/dbus"]
    assert host_path_at("/run/systemd") == {"path": "/run/systemd", "type": "Directory"}
    try:
        from governor.systemd.bus import SYSTEM_BUS
    except ImportError:  # the systemd driver not in this checkout
        SYSTEM_BUS = "/run/dbus/system_bus_socket"
    assert os.path.dirname(SYSTEM_BUS) == "/run/dbus"
    assert volumes[mounts["/etc/governor/policy.d"]["name"]]["configMap"]["name"] == \
        "governor-policy"
    assert volumes[mounts["/etc/governor/config.toml"]["name"]]["configMap"]["name"] == \
        "governor-config"
    env = {e["name"]: e for e in c["env"]}
    assert env["GOVERNOR_DATABASE"]["valueFrom"]["secretKeyRef"] == {"name": "governor-db",
                                                                      "key": "url"}
    assert env["GOVERNOR_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["GOVERNOR_CGROUP_ROOT"]["value"] == "/sys/fs/cgroup"
    (port,) = c["ports"]
    # a restart for a stalled daemon only (/livez); degraded (the database down) is not
    # ready (/healthz) but is not restarted
    for probe in ("startupProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/livez", "port": port["name"]}, probe
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    # the metrics port is the one the config listens on, on all interfaces
    cfg = by_kind("ConfigMap", "governor-config")["data"]["config.toml"]
    assert tomllib.loads(cfg)["exporter"]["listen"] == "0.0.0.0:9717"
    assert port["containerPort"] == 9717


def test_the_startup_probe_outlasts_the_first_sample() -> None:
    """/livez is 503 until the first sampling pass: the startup probe gives it time, and
    liveness never fails a pod that samples every interval (stale after max(3 x, 30 s))."""
    c = container()
    cfg = tomllib.loads(by_kind("ConfigMap", "governor-config")["data"]["config.toml"])
    interval = float(cfg["sampling"]["interval"].rstrip("s"))
    start = c["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 10 * interval
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > max(3 * interval, 30)


def configmap_config(tmp_path: Path) -> Any:
    if "cgroup_driver" not in SCHEMA["governor"]:
        pytest.skip("governor.config has no [governor] cgroup_driver yet (the systemd "
                    "driver's change): the ConfigMap sets it")
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text(by_kind("ConfigMap", "governor-config")["data"]["config.toml"])
    return load_config(cfg_file, environ={
        "GOVERNOR_NODE": "node-7",
        "GOVERNOR_DATABASE": "postgresql+psycopg://governor@pg.example/governor"})


def test_daemonset_config_and_policy_load(tmp_path: Path) -> None:
    cfg = configmap_config(tmp_path)
    assert cfg.node == "node-7" and cfg.database_url.startswith("postgresql")
    assert cfg.listen == "0.0.0.0:9717" and cfg.log_format == "json"
    assert cfg.cgroup_driver == "systemd" and cfg.subtree == "governor.slice"
    pol_dir = tmp_path / "policy.d"
    pol_dir.mkdir()
    for name, text in by_kind("ConfigMap", "governor-policy")["data"].items():
        (pol_dir / name).write_text(text)
    pol = load_policy([pol_dir])
    assert sorted(pol.tenants) == ["acme"] and "web" in pol.tenants["acme"].groups


#: cgroups of a node under the kubelet's systemd driver (and its cgroupfs driver)
NODE_SERVICES = [
    "/init.scope",
    "/system.slice/kubelet.service",
    "/system.slice/containerd.service",
    "/system.slice/docker.service",
    "/system.slice/docker-0123abcd.scope",
    "/user.slice/user-1000.slice/session-4.scope",
    "/kubepods.slice/kubepods-pod0d1e.slice/cri-containerd-3f2a.scope",
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7c3b.slice/"
    "cri-containerd-9e8d.scope",
    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod51aa.slice/"
    "crio-77b1.scope",
    "/kubepods/burstable/pod7c3b/9e8d",
    "/kubepods/besteffort/pod51aa/77b1",
]


def test_daemonset_excludes_the_kubelet_and_node_services(tmp_path: Path) -> None:
    excluded = Exclusions(configmap_config(tmp_path).exclude_cgroups)
    for cg in NODE_SERVICES:
        assert excluded(cg), cg
    for cg in ("/", "/governor.slice/governor-acme.slice/governor-acme-web.slice",
               "/batch.scope"):
        assert not excluded(cg), cg


POD_POLICY = """
[tenants.ops.groups.batch]
[[tenants.ops.groups.batch.match]]
comm = "stress"
[tenants.ops.groups.pods]
[[tenants.ops.groups.pods.match]]
cgroup = "/kubepods.slice/*/cri-containerd-*.scope*"
"""


def test_pods_are_placed_only_by_rules_that_name_their_cgroup(tmp_path: Path) -> None:
    """As the placer decides (docs/placement.md, "Never moved"): the first rule wins, but a
    rule without a `cgroup` field holds back before an excluded cgroup; then only the rules
    that name a cgroup may take the process."""
    excluded = Exclusions(configmap_config(tmp_path).exclude_cgroups)
    rules = RuleSet.from_policy(parse_policy([("p.toml", POD_POLICY)]))
    cv = ContainerView(HOST_NS, lambda p, ns: None)
    proc = tmp_path / "proc"
    pod = NODE_SERVICES[7]

    def decide(pid: int, cgroup: str) -> str | None:
        add_process(proc, pid, comm="stress", cgroup=cgroup)
        with Proc(str(proc), pid) as p:
            rule = rules.first(p, cv)
            if rule is not None and rule.cgroup is None and excluded(cgroup):
                rule = rules.first(p, cv, cgroup_only=True)
            return None if rule is None else rule.target

    assert decide(10, "/") == "ops/batch"
    assert decide(11, "/system.slice/kubelet.service") is None
    assert decide(12, "/kubepods/burstable/pod7c3b/9e8d") is None
    assert decide(13, pod) == "ops/pods"


# --- the image: deploy/docker/Dockerfile ---------------------------------------------------

def image() -> str:
    img: str = container()["image"]
    return img


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        buf = ""
    return out


def documented_build_tags() -> set[str]:
    """The -t of every build command the Dockerfile's comments document."""
    tags = set()
    for line in DOCKERFILE.read_text().splitlines():
        text = line.lstrip("# ")
        if not text.startswith(("podman build", "docker build")):
            continue
        words = shlex.split(text)
        if "-t" in words:
            tags.add(words[words.index("-t") + 1])
    return tags


def test_the_manifests_run_the_image_the_dockerfile_builds() -> None:
    assert documented_build_tags() == {image()}
    # the DaemonSet's comment says the same command
    assert (f"podman build --format docker -f deploy/docker/Dockerfile -t {image()} ."
            in DAEMONSET.read_text())
    (job_c,) = load_docs(REPO / "deploy/kubernetes/db-upgrade-job.yaml")[0]["spec"][
        "template"]["spec"]["containers"]
    assert job_c["image"] == image() and job_c["args"] == ["db", "upgrade"]
    # fully qualified (containerd expands a bare name to docker.io/library/...), tagged
    # with the package's version
    name, _, tag = image().rpartition(":")
    assert name == "localhost/governor"
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert tag == version
    assert container()["imagePullPolicy"] == "IfNotPresent"


def test_dockerfile_two_stages_no_compiler_in_the_image() -> None:
    ins = dockerfile_instructions()
    froms = [a for i, a in ins if i == "FROM"]
    assert froms == ["${BASE} AS build", "${BASE}"]
    assert ("ARG", "BASE=docker.io/library/debian:12-slim") in ins
    final = ins[max(k for k, (i, _) in enumerate(ins) if i == "FROM"):]
    build = ins[:len(ins) - len(final)]
    build_runs = " ".join(a for i, a in build if i == "RUN")
    assert "python3-dev" in build_runs and "gcc" in build_runs
    assert "'/src[postgres]'" in build_runs
    # the accelerator is optional in setup.py: the build insists on it
    assert ("import governor.cgroupfs._fastread, governor.metering._fastmeter, "
            "governor.exporter._fastrender, governor.store._fastrows") in build_runs
    assert ("governor.placement._fastnetlink, governor.placement._fastproc, "
            "governor.cgroupfs._keepwarm, governor.metering._fastsample") in build_runs
    final_runs = " ".join(a for i, a in final if i == "RUN")
    assert "gcc" not in final_runs and "-dev" not in final_runs
    assert "install -y --no-install-recommends python3 " in final_runs
    assert ("COPY", "--from=build /opt/governor /opt/governor") in final
    assert ("ENTRYPOINT", '["/usr/local/bin/governor"]') in final
    assert ("CMD", '["run", "--config", "/etc/governor/config.toml"]') in final
    assert ("EXPOSE", "9717") in final
    (health,) = [a for i, a in final if i == "HEALTHCHECK"]
    assert "http://127.0.0.1:9717/healthz" in health
    # the DaemonSet runs the image's entrypoint (through nsenter) with the image's CMD
    assert container()["command"][-1] == "/usr/local/bin/governor"


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    lines = [x for x in DOCKERIGNORE.read_text().splitlines() if x and not x.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!setup.py", "!README.md", "!governor/"} <= set(lines)
    # the in-place accelerator of a developer's checkout is not copied: the image builds its own
    assert "governor/**/*.so" in lines
    assert lines.index("governor/**/*.so") > lines.index("!governor/")


def _ca_bundle() -> str | None:
    for cand in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                 "/etc/ssl/certs/ca-certificates.crt"):
        if cand and os.path.isfile(cand):
            return cand
    return None


def _run(cmd: list[str], timeout: float = 900) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert r.returncode == 0, f"{shlex.join(cmd)}: exit {r.returncode}\n{r.stderr[-4000:]}"
    return r.stdout


@pytest.mark.skipif(os.environ.get("GOVERNOR_IMAGE_BUILD") != "1",
                    reason="builds the container image (~4 min, network to Debian's archive "
                           "and PyPI): set GOVERNOR_IMAGE_BUILD=1")
def test_image_builds_and_runs(tmp_path: Path) -> None:
    """Builds localhost/governor:0.1.0 as documented, on a Debian 12 base made from Debian's
    archive (no Docker Hub here), and checks what is in it.

    buildah's chroot isolation runs the RUN steps without an OCI runtime, so no cgroup is
    created anywhere; GOVERNOR_IMAGE_BASE names an existing Debian 12 image to skip the
    mmdebstrap step."""
    for tool in ("buildah", *(() if os.environ.get("GOVERNOR_IMAGE_BASE") else ("mmdebstrap",))):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install buildah mmdebstrap)")
    t0 = time.monotonic()
    base = os.environ.get("GOVERNOR_IMAGE_BASE", "localhost/debian:12-mmdebstrap")
    make_base = "GOVERNOR_IMAGE_BASE" not in os.environ
    if make_base:
        tar = tmp_path / "debian12.tar"
        _run(["mmdebstrap", "--variant=minbase", "bookworm", str(tar)])
        ctr = _run(["buildah", "from", "scratch"]).strip()
        try:
            _run(["buildah", "add", ctr, str(tar), "/"])
            _run(["buildah", "commit", "--rm", ctr, base])
        except BaseException:
            subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)
            raise
    cmd = ["buildah", "bud", "--isolation", "chroot", "--format", "docker", "--layers=false",
           "--build-arg", f"BASE={base}", "-f", str(DOCKERFILE), "-t", image()]
    ca = _ca_bundle()
    if ca is not None:
        cmd += ["--secret", f"id=pip_ca,src={ca}"]
    _run([*cmd, str(REPO)], timeout=1800)
    built = time.monotonic() - t0

    import json
    info = json.loads(_run(["buildah", "inspect", "--type", "image", image()]))
    conf = info["Docker"]["config"]
    assert conf["Entrypoint"] == ["/usr/local/bin/governor"]
    assert conf["Cmd"] == ["run", "--config", "/etc/governor/config.toml"]
    assert "http://127.0.0.1:9717/healthz" in " ".join(conf["Healthcheck"]["Test"])
    ctr = _run(["buildah", "from", image()]).strip()
    try:
        def run(*argv: str) -> str:
            return _run(["buildah", "run", "--isolation", "chroot", ctr, "--", *argv])

        assert run("governor", "--version").strip() == \
            f"governor, version {image().rpartition(':')[2]}"
        out = run("/opt/governor/bin/python", "-c",
                  "import governor.cgroupfs._fastread as f, governor.metering._fastmeter as m, "
                  "governor.exporter._fastrender as r, governor.store._fastrows as s, "
                  "psycopg; print(f.__file__, m.__file__, r.__file__, s.__file__)")
        assert out.strip().endswith(".so")
        # no compiler in the image; nsenter (util-linux) for the DaemonSet's command
        run("sh", "-c", "! command -v gcc && ! command -v cc && command -v nsenter")
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False)
    (listed,) = json.loads(_run(["buildah", "images", "--json", image()]))
    print(f"\n{image()}: built in {built:.0f} s"
          f"{' (with the mmdebstrap base)' if make_base else ''}, {listed['size']}")
