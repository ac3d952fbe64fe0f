"""governor: a cgroup v2 resource governor and metering service for multi-tenant Linux hosts.

The two flows read straight through the packages:

* write path: ``policy`` (TOML -> Policy) -> ``enforce`` (desired state -> plan) ->
  ``cgroupfs`` writes;
* read path: ``cgroupfs`` -> raw samples -> ``store`` -> rates, rollups -> metrics and bills.
"""

__version__ = "0.1.0"
