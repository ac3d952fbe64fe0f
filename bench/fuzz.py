"""Fuzz the policy loader and every kernel-file parser (issue #15, Proof).

Run: ``.venv/bin/python bench/fuzz.py [--cases 100000] [--target NAME ...] [--list]``
(or ``bench/run fuzz ...``).  Host only: no kernel, no files but a tmpfs scratch directory.

Inputs are built from real kernel output (tests/unit/cgroupfs_fake.py,
tests/unit/procfs_fake.py) and the example policies: the seeds as they are, mutations of
them (bytes flipped, tokens inserted, lines cut, duplicated or swapped, huge numbers,
bytes that are not UTF-8), text over the format's alphabet and raw bytes.  The bench draws
them from a seeded ``random.Random`` (``--seed``: a run is repeatable; Hypothesis's engine
costs ~3 ms a case, too slow for 100,000 per target) and shrinks a crashing input by
deleting chunks while it still crashes the same way; the unit test
tests/unit/test_fuzz_parsers.py runs the same targets under Hypothesis
(:func:`kernel_bytes`), a few hundred cases each.  A target
passes when every input gives a value or the parser's documented error:

* governor/cgroupfs/parse.py: :class:`~governor.cgroupfs.parse.ParseError` (the bytes
  parsers also ``UnicodeDecodeError``, as ``data.decode()`` of their docstrings); each
  bytes parser also gives what its text parser gives for ``data.decode()``;
* governor/placement/procfs.py: ``ValueError``;
* the policy loader (``parse_policy`` of TOML text): :class:`~governor.policy.PolicyInvalid`;
* with the C accelerator built (``c-*`` targets), the C readers against the Python ones on
  the same bytes: the same value, or the same error (type; and message where the C reader
  hands the text to the Python parser).

Anything else is a crash: the bench prints the target, the (shrunk) input and the
traceback, and exits 1.  Per target it prints the cases run, the time and the crashes.
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import strategies as st

from governor.cgroupfs import parse as P
from governor.cgroupfs import reader as R
from governor.placement import netlink, procfs
from governor.policy import PolicyInvalid, parse_policy
from tests.unit.cgroupfs_fake import LEAF_FILES
from tests.unit.procfs_fake import REAL_KTHREAD_STAT, REAL_STAT, REAL_STATUS

# --- inputs --------------------------------------------------------------------------------

MOUNTINFO = (
    "24 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n"
    "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
    "rw,nsdelegate,memory_recursiveprot\n"
    "41 24 0:36 / /mnt/with\\040space rw - tmpfs tmp\\011fs rw\n")
PROC_CGROUP = ("12:pids:/user.slice\n11:cpu,cpuacct:/user.slice\n1:name=systemd:/init.scope\n"
               "0::/user.slice/user-0.slice/session-1.scope\n")
IO_MAX = "8:0 rbps=max wbps=1048576 riops=max wiops=120\n254:0 rbps=10 wbps=max riops=1 wiops=2\n"

#: tokens the mutator inserts: the kernel formats' separators and odd numbers
TOKENS = [b" ", b"  ", b"\n", b"\n\n", b"\r\n", b"\t", b"=", b":", b"::", b"(", b")", b") ",
          b"max", b"-", b"-1", b"+5", b"1_000", b"0x10", b"1e5", b"nan", b"inf", b"0.00",
          b"99999999999999999999999", b"9" * 5000, b"\xff", b"\xfe\xff", b"\x00", b"\xc3\xa9",
          b"\xe2\x80\xa8", b"\x85", b"\xd9\xa3", b"some", b"full", b"avg10=", b"total=",
          b"default", b"rbytes=", b"0::", b"[", b"]", b"pid:[", b"\\040", b" - "]


POLICY_TOKENS = [b"[tenants.a]", b"[tenants.a.groups.b]", b"[plans.p]", b"memory.max = ",
                 b'"1G"', b'"512M"', b"cpu.weight = ", b"[[", b"]]", b"=", b'"', b"'" * 3,
                 b"groups", b"plan = ", b"-1", b"1e999", b"nan", b"inf", b"true", b"{", b"}",
                 b",", b"\n", b"#", b".", b"\xff", b"\x00", b'"max"', b"io.max", b"match",
                 b"2026-11-01T00:00:00Z", b"9" * 40, b"..", b"/", b"\\u0000"]


def mutate(data: bytes, rnd: random.Random, tokens: list[bytes] = TOKENS) -> bytes:
    """1-4 random edits of kernel output (or of a policy file, with its tokens)."""
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(8)
        pos = rnd.randint(0, len(b))
        if op == 0 and b:                      # flip a byte
            b[min(pos, len(b) - 1)] = rnd.randrange(256)
        elif op == 1:                          # insert a token
            b[pos:pos] = rnd.choice(tokens)
        elif op == 2:                          # delete a range
            del b[pos:pos + rnd.randint(1, 16)]
        elif op == 3:                          # truncate
            del b[pos:]
        elif op == 4:                          # replace a token
            end = pos + rnd.randint(1, 8)
            b[pos:end] = rnd.choice(tokens)
        else:                                  # duplicate, drop or swap lines
            lines = bytes(b).split(b"\n")
            i, j = rnd.randrange(len(lines)), rnd.randrange(len(lines))
            if op == 5:
                lines.insert(i, lines[j])
            elif op == 6 and len(lines) > 1:
                del lines[i]
            else:
                lines[i], lines[j] = lines[j], lines[i]
            b = bytearray(b"\n".join(lines))
    return bytes(b)


def _alphabet(raw: list[bytes]) -> list[str]:
    return sorted({chr(c) for s in raw for c in s if c < 128} | {"\n", " ", "\xe9"})


def generate(rnd: random.Random, raw: list[bytes], alphabet: list[str],
             tokens: list[bytes] = TOKENS) -> bytes:
    """One input: a seed, a mutation of one (once or twice), format text or bytes."""
    r = rnd.random()
    if r < 0.03:
        return rnd.choice(raw)
    if r < 0.8:
        data = mutate(rnd.choice(raw), rnd, tokens)
        return mutate(data, rnd, tokens) if rnd.random() < 0.3 else data
    n = rnd.randrange(121)
    if r < 0.92:
        return "".join(rnd.choices(alphabet, k=n)).encode()
    return rnd.randbytes(n)


def kernel_bytes(*seeds: str | bytes) -> st.SearchStrategy[bytes]:
    """The same kinds of input as :func:`generate`, for Hypothesis (the unit test)."""
    raw = [s.encode() if isinstance(s, str) else s for s in seeds]
    alphabet = _alphabet(raw)
    return st.one_of(
        st.sampled_from(raw),
        st.builds(mutate, st.sampled_from(raw), st.randoms(use_true_random=False)),
        st.builds(mutate, st.builds(mutate, st.sampled_from(raw),
                                    st.randoms(use_true_random=False)),
                  st.randoms(use_true_random=False)),
        st.text(alphabet=alphabet, max_size=120).map(lambda t: t.encode()),
        st.binary(max_size=120),
    )


def text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


# --- checks --------------------------------------------------------------------------------

def outcome(fn: Callable[[], Any], documented: tuple[type[BaseException], ...]) -> tuple[Any, ...]:
    """("ok", repr of the value) or ("error", type, message) for a documented error; any
    other exception goes up (a crash)."""
    try:
        return ("ok", repr(fn()))
    except documented as e:
        return ("error", type(e).__name__, str(e))


def same(what: str, a: tuple[Any, ...], b: tuple[Any, ...], *, messages: bool = True) -> None:
    if not messages:
        a, b = a[:2], b[:2]
    if a != b:
        raise AssertionError(f"{what} differ: {a!r} != {b!r}")


PE = (P.ParseError,)
PEU = (P.ParseError, UnicodeDecodeError)


def text_parser(fn: Callable[[str], object]) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        outcome(lambda: fn(text(data)), PE)
    return run


def bytes_parser(fast: Callable[[bytes], object],
                 slow: Callable[[str], object]) -> Callable[[bytes], None]:
    """A bytes parser, and the same value or error as its text parser of data.decode()."""
    def run(data: bytes) -> None:
        got = outcome(lambda: fast(data), PEU)
        same("bytes and text parser", got, outcome(lambda: slow(data.decode()), PEU))
    return run


def policy(data: bytes) -> None:
    try:
        parse_policy([("fuzz.toml", data.decode("utf-8", "replace"))],
                     device_resolver=_no_devices)
    except PolicyInvalid as e:
        if not e.problems:
            raise AssertionError("PolicyInvalid without problems") from e


def _no_devices(path: str) -> tuple[int, int]:
    if path == "/dev/vda":
        return (253, 0)
    raise OSError(errno.ENOENT, "No such file or directory", path)


def _policy_seeds() -> list[bytes]:
    real = Path(__file__).resolve().parents[1] / "examples" / "policy.d"
    return [p.read_bytes() for p in sorted(real.glob("*.toml"))] + [
        b'[tenants.acme]\nmemory.max = "1G"\nplan = "std"\n[tenants.acme.groups.web]\n'
        b'memory.max = "512M"\ncpu.weight = 10\ncpu.max = "50000 100000"\n'
        b'io.max = [{device = "/dev/vda", rbps = "10M"}]\nmatch = [{exe = "/usr/bin/*"}]\n'
        b'[plans.std]\ncurrency = "EUR"\ncpu_core_hour = "0.040"\n']


# --- procfs: the Python parsers, and the C readers on the same bytes in a file ----------------

def _proc_status(data: bytes) -> None:
    outcome(lambda: procfs.parse_status(text(data)), (ValueError,))


class ProcFiles:
    """A fake ``/proc/50`` in a tmpfs directory, rewritten for every case."""

    def __init__(self) -> None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = tempfile.TemporaryDirectory(prefix="governor-fuzz-", dir=base)
        self.base = Path(self.dir.name) / "50"
        (self.base / "ns").mkdir(parents=True)
        (self.base / "task" / "50").mkdir(parents=True)

    def put(self, name: str, data: bytes) -> str:
        path = self.base / name
        path.write_bytes(data)
        return str(path)

    def link(self, target: bytes) -> str:
        path = self.base / "ns" / "pid"
        if path.is_symlink():
            path.unlink()
        os.symlink(target, path)
        return str(path)


_files: ProcFiles | None = None


def files() -> ProcFiles:
    global _files
    if _files is None:
        _files = ProcFiles()
    return _files


def _c_stat(data: bytes) -> None:
    c = procfs._c
    assert c is not None
    path = files().put("stat", data)
    got = outcome(lambda: c.proc_stat(path), (ValueError,))
    want = outcome(lambda: None if not data else tuple(procfs.parse_stat(text(data))),
                   (ValueError,))
    same("C proc_stat and parse_stat", got, want, messages=False)


def _c_cgroup(data: bytes) -> None:
    c = procfs._c
    assert c is not None
    path = files().put("cgroup", data)
    same("C proc_cgroup and parse_cgroup", outcome(lambda: c.proc_cgroup(path), ()),
         outcome(lambda: procfs.parse_cgroup(text(data)), ()))


def _c_children(data: bytes) -> None:
    c = procfs._c
    assert c is not None
    path = files().put("task/50/children", data)
    got = outcome(lambda: c.proc_children(path), (ValueError,))
    same("C proc_children and parse_children", got,
         outcome(lambda: procfs.parse_children(data), (ValueError,)), messages=False)


def _c_ns(data: bytes) -> None:
    c = procfs._c
    assert c is not None
    target = data.replace(b"\x00", b"").replace(b"/", b"")[:200] or b"x"
    path = files().link(target)
    got = outcome(lambda: c.proc_ns(path), (ValueError,))
    same("C proc_ns and parse_ns_link", got,
         outcome(lambda: procfs.parse_ns_link(text(target)), (ValueError,)), messages=False)


def _c_events(data: bytes) -> None:
    c = netlink._c
    assert c is not None
    same("C proc_events and parse_messages_py",
         outcome(lambda: c.proc_events(data, netlink.ProcEvent), ()),
         outcome(lambda: netlink.parse_messages_py(data), ()))


def _events_py(data: bytes) -> None:
    netlink.parse_messages_py(data)


# --- the C reader of the sampler's fast files, on a memfd --------------------------------------

class FastFile:
    """One of reader.FAST_FILES read by ``_fastread.read_fast`` from a memfd, against its
    Python parser (``reader._FAST_SPEC``) of the same bytes."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.fd = os.memfd_create(f"fuzz-{R.FAST_FILES[index]}")
        self.fds = tuple(self.fd if i == index else -1 for i in range(len(R.FAST_FILES)))
        self.cache: list[Any] = [None] * len(R.FAST_FILES)
        kind, self.target, self.parse = R._FAST_SPEC[index]
        self.psi = kind == 3

    def __call__(self, data: bytes) -> None:
        assert R._fastread is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

        def c() -> object:
            st = R._fastread.read_fast(self.fds, self.cache, 1)  # type: ignore[union-attr]
            return st.psi.get(self.target) if self.psi else getattr(st, self.target)
        same(f"C read_fast and the Python parser of {R.FAST_FILES[self.index]}",
             outcome(c, PEU), outcome(lambda: self.parse(data), PEU))


def _c_missing(data: bytes) -> None:
    raise RuntimeError("the C accelerator is not built")


# --- the targets ---------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: list[bytes]
    needs_c: bool = False
    tokens: list[bytes] | None = None  # the mutator's (default: TOKENS)
    raw_bytes: bool = False            # inputs are plain random bytes (netlink datagrams)

    def inputs(self) -> st.SearchStrategy[bytes]:
        if self.raw_bytes:
            return st.binary(max_size=300)
        return kernel_bytes(*self.seeds)


def _k(*seeds: str | bytes) -> list[bytes]:
    return [s.encode() if isinstance(s, str) else s for s in seeds]


L = LEAF_FILES
FLAT = (L["cpu.stat"], L["memory.events"], L["memory.stat"], L["pids.events"],
        L["cgroup.events"])
PSI = (L["cpu.pressure"], L["io.pressure"], "some avg10=0.00 avg60=0.00 avg300=0.00 total=1\n")

TARGETS = [
    Target("policy", policy, _policy_seeds(), tokens=POLICY_TOKENS),
    Target("parse_int", text_parser(P.parse_int), _k(L["memory.current"], "0\n", " 42 \n")),
    Target("parse_limit", text_parser(P.parse_limit), _k(L["memory.max"], "536870912\n")),
    Target("parse_list", text_parser(P.parse_list), _k(L["cgroup.controllers"])),
    Target("parse_pids", text_parser(P.parse_pids), _k("1\n42\n4194304\n", "")),
    Target("parse_flat_keyed", text_parser(P.parse_flat_keyed), _k(*FLAT)),
    Target("parse_nested_keyed", text_parser(P.parse_nested_keyed), _k(IO_MAX, L["io.stat"])),
    Target("parse_io_stat", text_parser(P.parse_io_stat), _k(L["io.stat"], IO_MAX)),
    Target("parse_io_weight", text_parser(P.parse_io_weight),
           _k(L["io.weight"], "default 100\n8:0 50\n")),
    Target("parse_cpu_max", text_parser(P.parse_cpu_max), _k(L["cpu.max"], "50000 100000\n")),
    Target("parse_psi", text_parser(P.parse_psi), _k(*PSI)),
    Target("parse_mountinfo", text_parser(P.parse_mountinfo), _k(MOUNTINFO)),
    Target("parse_proc_cgroup", text_parser(P.parse_proc_cgroup), _k(PROC_CGROUP)),
    Target("parse_int_bytes", bytes_parser(P.parse_int_bytes, P.parse_int),
           _k(L["memory.current"], "0\n")),
    Target("FlatKeyedBytes", bytes_parser(P.FlatKeyedBytes("cpu.stat"),
                                          lambda t: P.parse_flat_keyed(t, "cpu.stat")),
           _k(*FLAT)),
    Target("parse_io_stat_bytes", bytes_parser(P.parse_io_stat_bytes, P.parse_io_stat),
           _k(L["io.stat"], L["io.stat"] * 3)),
    Target("parse_psi_bytes", bytes_parser(P.parse_psi_bytes, P.parse_psi), _k(*PSI)),
    Target("procfs.parse_stat",
           lambda d: outcome(lambda: procfs.parse_stat(text(d)), (ValueError,)) and None,
           _k(REAL_STAT, REAL_KTHREAD_STAT)),
    Target("procfs.parse_status", _proc_status, _k(REAL_STATUS)),
    Target("procfs.parse_cgroup",
           lambda d: outcome(lambda: procfs.parse_cgroup(text(d)), ()) and None,
           _k(PROC_CGROUP)),
    Target("procfs.parse_ns_link",
           lambda d: outcome(lambda: procfs.parse_ns_link(text(d)), (ValueError,)) and None,
           _k("pid:[4026531836]")),
    Target("procfs.parse_cmdline",
           lambda d: outcome(lambda: procfs.parse_cmdline(d), ()) and None,
           _k(b"/usr/bin/python3\x00-m\x00governor\x00", b"nginx: worker process")),
    Target("procfs.parse_children",
           lambda d: outcome(lambda: procfs.parse_children(d), (ValueError,)) and None,
           _k("51 52 53 ", "")),
    Target("netlink.parse_messages_py", _events_py, [], raw_bytes=True),
    Target("c-proc_stat", _c_stat, _k(REAL_STAT, REAL_KTHREAD_STAT), needs_c=True),
    Target("c-proc_cgroup", _c_cgroup, _k(PROC_CGROUP, "0::/\n"), needs_c=True),
    Target("c-proc_children", _c_children, _k("51 52 53 ", "7\n"), needs_c=True),
    Target("c-proc_ns", _c_ns, _k("pid:[4026531836]"), needs_c=True),
    Target("c-proc_events", _c_events, [], needs_c=True, raw_bytes=True),
    *(Target(f"c-read_fast:{name}", FastFile(i) if R._fastread is not None else _c_missing,
             _k(L[name], *((L[name] * 2,) if name == "io.stat" else ())), needs_c=True)
      for i, name in enumerate(R.FAST_FILES)),
]


# --- the runner ----------------------------------------------------------------------------

@dataclass
class Result:
    cases: int = 0
    crash: bytes | None = None
    error: str = ""


def _crash(target: Target, data: bytes) -> tuple[str, str] | None:
    """(exception type and place, traceback) when ``data`` crashes ``target``, else None."""
    try:
        target.run(data)
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)[-1]
        return f"{type(e).__name__}@{tb.filename}:{tb.lineno}", traceback.format_exc()
    return None


def shrink(target: Target, data: bytes, kind: str) -> bytes:
    """A smaller input crashing the same way (same exception at the same line)."""
    chunk = max(1, len(data) // 2)
    while chunk >= 1:
        i = 0
        while i < len(data):
            cand = data[:i] + data[i + chunk:]
            got = _crash(target, cand)
            if got is not None and got[0] == kind:
                data = cand
            else:
                i += chunk
        chunk //= 2
    return data


def fuzz(target: Target, cases: int, seed_value: int) -> Result:
    res = Result()
    rnd = random.Random(f"{seed_value}:{target.name}")
    raw, tokens = target.seeds, target.tokens or TOKENS
    alphabet = _alphabet(raw)
    run = target.run
    for _ in range(cases):
        data = rnd.randbytes(rnd.randrange(301)) if target.raw_bytes else \
            generate(rnd, raw, alphabet, tokens)
        res.cases += 1
        try:
            run(data)
        except Exception:
            got = _crash(target, data)
            if got is None:  # (not repeatable: report it as it came)
                res.crash, res.error = data, traceback.format_exc()
            else:
                res.crash = shrink(target, data, got[0])
                res.error = (_crash(target, res.crash) or got)[1]
            break
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=100_000, help="inputs per target")
    ap.add_argument("--target", action="append", default=[],
                    help="a target name or prefix (repeatable; default: every one)")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--list", action="store_true", help="print the targets and exit")
    args = ap.parse_args(argv)
    c_built = procfs._c is not None and R._fastread is not None and R.ACCELERATED
    chosen = [t for t in TARGETS
              if not args.target or any(t.name.startswith(p) for p in args.target)]
    if args.list:
        for t in chosen:
            print(t.name + (" (C accelerator)" if t.needs_c else ""))
        return 0
    if not chosen:
        print(f"fuzz: no target matches {args.target}", file=sys.stderr)
        return 2
    print(f"fuzz: {len(chosen)} targets, {args.cases} cases each, seed {args.seed}, "
          f"C accelerator {'built' if c_built else 'not built: c-* targets skipped'}")
    print(f"{'target':34} {'cases':>8} {'seconds':>8} {'crashes':>8}")
    crashed = 0
    total = time.monotonic()
    for t in chosen:
        if t.needs_c and not c_built:
            print(f"{t.name:34} {'skipped (no C accelerator)':>26}")
            continue
        t0 = time.monotonic()
        res = fuzz(t, args.cases, args.seed)
        dt = time.monotonic() - t0
        print(f"{t.name:34} {res.cases:8d} {dt:8.1f} {int(res.crash is not None):8d}",
              flush=True)
        if res.crash is not None:
            crashed += 1
            print(f"  CRASH in {t.name}: input {res.crash!r}\n{res.error}", flush=True)
    print(f"fuzz: {len(chosen)} targets, {crashed} crashed, "
          f"{time.monotonic() - total:.0f} s")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
