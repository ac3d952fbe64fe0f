"""The store: SQLAlchemy models, services (session passed in), the spool and Alembic glue.

* :mod:`.db` -- engines (SQLite tuned and private, PostgreSQL via psycopg 3), ``upgrade``,
  ``check_schema``, sessions;
* :mod:`.models` -- the schema;
* :mod:`.service` -- ``record_samples`` (the sampler's entry point), ``meter``,
  ``apply_retention`` and the recorders for gaps, applied policies and OOM events;
* :mod:`.spool` -- the bounded local journal used while the database is unreachable;
* :mod:`.cli` -- ``governor db upgrade|current``; :mod:`.testing` -- pytest fixtures.
"""
