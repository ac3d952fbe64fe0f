"""Errors of usage reports and bills."""

from __future__ import annotations

from governor.errors import GovernorError, UnknownTenant

__all__ = ["BillingError", "InvalidPeriod", "NoPricePlan", "UnknownTenant"]


class BillingError(GovernorError):
    """A report or bill that cannot be made as asked."""


class InvalidPeriod(BillingError):
    """The period is empty or inverted, or a date could not be read (exit 2)."""

    exit_code = 2


class NoPricePlan(BillingError):
    """No price applies to (part of) the period: the policy must say (exit 1)."""

    exit_code = 1
