"""The PostgreSQL test variant: skipped with a reason locally, a failure under CI=true."""

from __future__ import annotations

import pytest

from tests.helpers.db import PG_ENV, _pg_server_url


def test_unset_url_skips_locally(monkeypatch):
    monkeypatch.delenv(PG_ENV, raising=False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"pg-test-server\.sh start"):
        _pg_server_url()


def test_unset_url_fails_under_ci(monkeypatch):
    monkeypatch.delenv(PG_ENV, raising=False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but GOVERNOR_TEST_PG_URL"):
        _pg_server_url()


def test_set_url_is_used(monkeypatch):
    monkeypatch.setenv(PG_ENV, "postgresql://u@h/db")
    assert _pg_server_url() == "postgresql://u@h/db"
