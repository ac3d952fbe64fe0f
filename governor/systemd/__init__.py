"""Talking to systemd when it is PID 1 and owns the cgroup tree.

``governor.systemd.bus`` is a small typed client of systemd's D-Bus API (over jeepney, imported
only when a call is made).  This package module imports nothing itself, so ``governor --help``
and the cgroupfs driver never pay for D-Bus.
"""
