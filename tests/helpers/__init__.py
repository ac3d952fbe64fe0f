"""Helpers shared by the tests and the benchmarks: never imported by the governor package.

``db``: pytest fixtures for a fresh SQLite/PostgreSQL database and ``make_sample``;
``exposition``: synthetic exporter snapshots and the parsing of an exposition with
prometheus-client's parser.
"""
