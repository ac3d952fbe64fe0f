"""Issue #18 on a real kernel: ``governor run`` makes its node uid at the first start, keeps
its rows when its name changes (the history stays on one node id), and a second host that
claims the same name is refused (nothing of it lands in that node's rows; it spools)."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from governor.store.models import Node, Sample
from governor.store.nodeuid import UID_FILE
from tests.kernel.test_daemon_kernel import Gov, engine, gov, wait  # noqa: F401

pytestmark = pytest.mark.kernel


def _nodes(g: Gov) -> list[tuple[int, str, str | None]]:
    e = engine(g)
    try:
        with e.connect() as c:
            return [(i, n, u) for i, n, u in c.execute(
                select(Node.id, Node.name, Node.uid).order_by(Node.id))]
    finally:
        e.dispose()


def _samples(g: Gov) -> dict[int, int]:
    e = engine(g)
    try:
        with e.connect() as c:
            return dict(c.execute(
                select(Sample.node_id, func.count()).group_by(Sample.node_id)).tuples().all())
    finally:
        e.dispose()


def test_a_renamed_node_keeps_its_rows_and_a_second_host_is_refused(
        gov: Gov, tmp_path: Path) -> None:  # noqa: F811
    state = tmp_path / "state"
    gov.start()
    try:
        assert wait(lambda: sum(_samples(gov).values()) >= 3, 60), gov.tail()
    finally:
        assert gov.stop() == 0
    uid = (state / UID_FILE).read_text().strip()
    assert uuid.UUID(uid).version == 4
    assert stat.S_IMODE((state / UID_FILE).stat().st_mode) == 0o600
    [(nid, name, stored)] = _nodes(gov)
    assert (name, stored) == ("vm", uid)
    before = _samples(gov)[nid]

    # the host renamed: same state directory, same uid, another name
    text = gov.cfg.read_text()
    gov.cfg.write_text(text.replace('node = "vm"', 'node = "vm-renamed"'))
    gov.start()
    try:
        assert wait(lambda: _samples(gov).get(nid, 0) >= before + 3, 60), gov.tail()
    finally:
        assert gov.stop() == 0
    assert _nodes(gov) == [(nid, "vm-renamed", uid)]
    assert set(_samples(gov)) == {nid}                 # the whole history on one node
    assert "node renamed: vm -> vm-renamed" in gov.log.read_text()
    assert (state / UID_FILE).read_text().strip() == uid

    # a second host (another state directory: another uid) configured with that name
    gov.cfg.write_text(gov.cfg.read_text().replace(f'state_dir = "{state}"',
                                                   f'state_dir = "{tmp_path}/state2"'))
    gov.start()
    try:
        assert wait(lambda: "node identity: node name 'vm-renamed' is taken"
                    in gov.log.read_text(), 60), gov.tail()
    finally:
        assert gov.stop() == 0
    other = (tmp_path / "state2" / UID_FILE).read_text().strip()
    assert other != uid and other in gov.log.read_text() and uid in gov.log.read_text()
    assert _nodes(gov) == [(nid, "vm-renamed", uid)]   # nothing merged, no new row
    assert set(_samples(gov)) == {nid}
