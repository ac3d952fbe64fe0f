"""``governor status`` and ``governor top``: per-tenant live usage from pairs of reads.

view.py (pure: rows from two snapshots), snapshot.py (reads the tree), render.py (the
table), cli.py (the commands).  Field names: docs/status.md.
"""
