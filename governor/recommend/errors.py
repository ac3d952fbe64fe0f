"""Errors of ``governor recommend``."""

from __future__ import annotations

from governor.errors import GovernorError


class RecommendError(GovernorError):
    """A recommendation that cannot be made as asked."""


class BadOption(RecommendError):
    """An option with a value it cannot use: names the option and the value (exit 2)."""

    exit_code = 2


class DropInError(RecommendError):
    """The drop-in cannot be written: no suggestion for a tenant the policy defines, or
    the suggestions do not fit the policy (exit 1: what was checked is wrong)."""

    exit_code = 1
