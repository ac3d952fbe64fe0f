"""Tests that need systemd as PID 1 (marked ``systemd``): `governor sandbox exec --systemd`."""
