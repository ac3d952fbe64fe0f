"""What `pip install .` ships: the wheel holds everything the commands read at run time."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                        "-q", "-w", str(out), str(REPO)], capture_output=True, text=True,
                       check=False, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"pip wheel failed:\n{r.stdout}\n{r.stderr}")
    (whl,) = out.glob("governor-*.whl")
    return whl


def test_demo_policy_is_in_the_wheel_and_demo_finds_it_from_any_directory(
        wheel: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert "governor/data/demo-policy.toml" in names
    # install the wheel alone (no source tree on the path) and ask the demo from elsewhere
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = ("import governor.demo as d, governor.policy as p; "
             "assert d.DEMO_POLICY.is_file(), d.DEMO_POLICY; "
             "pol = p.load_policy([d.DEMO_POLICY]); print(d.DEMO_POLICY, sorted(pol.tenants))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env,
                       capture_output=True, text=True, check=False, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(str(target)), r.stdout  # the installed copy, not the checkout
    assert "acme" in r.stdout
