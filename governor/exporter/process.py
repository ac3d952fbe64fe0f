"""The governor's own metrics, from prometheus-client: process, platform, build and policy.

The groups' families are rendered once per sampling pass (:mod:`governor.exporter.render`);
these few are made at each scrape, as every client_python exporter makes them, and appended
to that rendering (:meth:`OwnMetrics.exposition`):

* ``process_*`` from client_python's ``ProcessCollector`` (CPU seconds, resident and
  virtual memory, open and maximum fds, start time), read from the procfs it is given;
* ``python_info`` from its ``PlatformCollector``;
* ``governor_build_info{version, python, accelerators, node}`` and, once a policy is in
  force, ``governor_policy_info{digest, node}`` from :class:`BuildCollector`.

They are client_python's own collectors rather than more hand-written families: the names,
help texts and the reading of ``/proc/self/stat`` are the ones every Prometheus user
already queries, and they follow client_python when it changes them.  The registry is
private (never client_python's global ``REGISTRY``), so that nothing imported by governor
can add families to ``/metrics`` behind its back.

The exposition is the 0.0.4 text format, the renderer's (``CONTENT_TYPE``): it has no
``# EOF`` line, so text appended after the groups' families stays one valid exposition.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import InfoMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from governor import __version__, accel

BUILD_INFO = "governor_build"    # InfoMetricFamily adds the _info suffix
BUILD_HELP = ("The governor's version, the Python running it and the C accelerators in use "
              "(empty: none, the pure-Python twins run).")
POLICY_INFO = "governor_policy"
POLICY_HELP = ("The policy in force: its digest (sha256 of the normalised policy, as "
               "`governor policy check` prints and the store records); no series before one "
               "is loaded.")
#: every family name the collectors here write (none is in render.ALL_METRICS)
FAMILIES = ("process_cpu_seconds", "process_virtual_memory_bytes",
            "process_resident_memory_bytes", "process_start_time_seconds",
            "process_open_fds", "process_max_fds", "python_info",
            f"{BUILD_INFO}_info", f"{POLICY_INFO}_info")


class BuildCollector:
    """``governor_build_info`` and ``governor_policy_info``, built fresh at each
    ``collect()`` from the sources it is given (the shape of client_python's
    ``ProcessCollector``)."""

    def __init__(self, *, node: str, policy: Callable[[], str | None],
                 accelerators: Callable[[], Iterable[str]] = accel.loaded,
                 python: str | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.node = node
        self.policy = policy
        self.accelerators = accelerators
        self.python = python if python is not None else platform.python_version()
        if registry is not None:
            registry.register(self)

    def collect(self) -> Iterator[Metric]:
        build = InfoMetricFamily(BUILD_INFO, BUILD_HELP)
        build.add_metric([], {"version": __version__, "python": self.python,
                              "accelerators": ",".join(self.accelerators()),
                              "node": self.node})
        yield build
        digest = self.policy()
        if digest is not None:
            pol = InfoMetricFamily(POLICY_INFO, POLICY_HELP)
            pol.add_metric([], {"digest": digest, "node": self.node})
            yield pol


class OwnMetrics:
    """The private registry holding the three collectors; :meth:`exposition` renders it."""

    def __init__(self, *, node: str, proc_root: str = "/proc") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        #: the digest of the policy in force (None: none loaded yet)
        self.policy_digest: str | None = None
        ProcessCollector(proc=proc_root, registry=self.registry)
        PlatformCollector(registry=self.registry)
        BuildCollector(node=node, policy=lambda: self.policy_digest, registry=self.registry)

    def exposition(self) -> bytes:
        """The text exposition of the families above, made now."""
        return bytes(generate_latest(self.registry))
