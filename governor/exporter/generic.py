"""The registered controllers' metric families (governor/controllers/: each module's
:class:`~governor.controllers.base.Metric`\\ s), rendered from plain data for
:func:`governor.exporter.render.render`, and the same families for the reference collector.

Two kinds of family:

* ``Metric.values``: a regular expression over the keys of the pass's samples'
  ``GroupSample.values`` (``"hugetlb.2MB.usage"``); its named groups become labels beside
  ``tenant``, ``group`` and ``node``; ``usec`` renders microseconds as seconds;
* ``Metric.effective``: a key of the sampler's read-back values (``Sampler.effective``:
  ``"cpus"`` is the text of ``cpuset.cpus.effective``), rendered as the number of entries
  in that CPU or node list (``governor_cpuset_cpus``).

A family with no sample is left out, as the fixed families are.  Labels are escaped and
sorted by name, values written as client_python writes them, so the text parses to the
collector's samples (tests/unit/test_exporter_generic.py, and promtool).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from governor.controllers import registry
from governor.controllers.base import Metric, parse_cpu_list
from governor.exporter.families import escape_help, escape_label
from governor.metering.sample import GroupSample

#: path -> read-back values (``Sampler.effective``)
Effective = Mapping[str, Mapping[str, str]]
#: one series: its labels (name -> value, without node) and its value
Series = tuple[dict[str, str], float | int]


def _split(path: str) -> tuple[str, str]:
    tenant, _, group = path.partition("/")
    return tenant, group


def entries(text: str | None) -> int | None:
    """The number of CPUs or nodes a kernel list names (None: no list, or not a list)."""
    if text is None:
        return None
    try:
        return len(parse_cpu_list(text))
    except ValueError:
        return None


def series(m: Metric, samples: Mapping[str, GroupSample],
           effective: Effective) -> Iterator[Series]:
    """The series of ``m`` over the groups (sorted by path, then by value key)."""
    if m.effective is not None:
        for path in sorted(effective):
            n = entries(effective[path].get(m.effective))
            if n is not None:
                tenant, group = _split(path)
                yield {"group": group, "tenant": tenant}, n
    if m.values is not None:
        pattern = m.values
        for path in sorted(samples):
            values = samples[path].values
            if not values:
                continue
            tenant, group = _split(path)
            for key in sorted(values):
                hit = pattern.fullmatch(key)
                if hit is None:
                    continue
                labels = {k: v or "" for k, v in hit.groupdict().items()}
                labels.update(group=group, tenant=tenant)
                raw = values[key]
                yield labels, raw / 1e6 if m.usec else raw


def controller_families(node: str, samples: Mapping[str, GroupSample],
                        effective: Effective) -> Iterator[str]:
    """The text of each registered family that has a sample: HELP and TYPE lines, then
    its samples, labels sorted by name (``node`` escaped already), for
    :func:`governor.exporter.render.render`."""
    for m in registry.generic_metrics():
        lines = []
        for labels, value in series(m, samples, effective):
            shown = {k: escape_label(v) for k, v in labels.items()}
            shown["node"] = node
            text = ",".join(f'{k}="{shown[k]}"' for k in sorted(shown))
            lines.append(f"{m.name}{{{text}}} {value!r}")
        if lines:
            yield (f"# HELP {m.name} {escape_help(m.help)}\n# TYPE {m.name} {m.type}\n"
                   + "\n".join(lines) + "\n")
