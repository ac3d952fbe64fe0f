"""Which containers use which image: one small JSON record per running container under
``<state_dir>/images/containers/ID.json``.

``launch --image`` writes a record (through :meth:`ImageStore.add_container`, under the
store's lock) before the container starts and removes it when the container ends.  A record
names the image (``name:tag`` and manifest digest), the layers it mounts and the pid with
its start time (field 22 of ``/proc/PID/stat``, in clock ticks since boot): a record whose
pid is gone, or now belongs to another process (the start time differs: the pid was
reused), is stale, and is removed by ``image rm``.  A live record keeps its image from
``rm`` and its layers from being collected.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from governor.image.errors import BadReference, StoreError
from governor.image.fsutil import read_json, write_json
from governor.placement.procfs import Proc, ProcessGone

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class ContainerRecord:
    id: str
    image: str            # name:tag
    digest: str           # the image's manifest digest when it started
    layers: list[str]     # diff-ids, base first
    pid: int
    starttime: int        # /proc/PID/stat field 22: tells a reused pid apart
    created: str          # ISO 8601 UTC

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_id(cid: str) -> str:
    if not ID_RE.fullmatch(cid):
        raise BadReference(cid, "a container id is letters, digits, '_', '.', '-' (at most "
                           "128, starting with a letter or digit)")
    return cid


def record_path(containers_dir: str, cid: str) -> str:
    return os.path.join(containers_dir, f"{check_id(cid)}.json")


def start_time(pid: int, proc_root: str = "/proc") -> int:
    """The start time of ``pid`` (ProcessGone when there is no such process)."""
    return Proc(proc_root, pid).fresh_starttime()


def is_alive(rec: ContainerRecord, proc_root: str = "/proc") -> bool:
    try:
        return start_time(rec.pid, proc_root) == rec.starttime
    except ProcessGone:
        return False


def parse_record(doc: object, path: str) -> ContainerRecord:
    fields = {"id": str, "image": str, "digest": str, "layers": list, "pid": int,
              "starttime": int, "created": str}
    if not isinstance(doc, dict):
        raise StoreError(path, "a container record must be a JSON object; remove the file")
    for key, typ in fields.items():
        v = doc.get(key)
        if not isinstance(v, typ) or isinstance(v, bool):
            raise StoreError(path, f"container record key {key!r}: {v!r} is not a "
                             f"{typ.__name__}; remove the file if no such container runs")
    if not all(isinstance(x, str) for x in doc["layers"]):
        raise StoreError(path, "container record key 'layers' must list digests")
    return ContainerRecord(**{k: doc[k] for k in fields})


def read_records(containers_dir: str) -> list[tuple[str, ContainerRecord]]:
    """Every record, with its path (live or stale: see :func:`is_alive`)."""
    try:
        names = sorted(os.listdir(containers_dir))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        path = os.path.join(containers_dir, name)
        doc = read_json(path)
        if doc is None:
            continue  # removed meanwhile
        out.append((path, parse_record(doc, path)))
    return out


def write_record(containers_dir: str, rec: ContainerRecord) -> str:
    path = record_path(containers_dir, rec.id)
    write_json(path, rec.as_dict())
    return path
