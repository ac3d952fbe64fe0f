"""Errors of usage reports and bills."""

from __future__ import annotations

from governor.errors import GovernorError


class BillingError(GovernorError):
    """A report or bill that cannot be made as asked."""


class UnknownTenant(BillingError):
    """The tenant is neither in the policy nor in the database (a usage error: exit 2)."""

    exit_code = 2

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        super().__init__(f"unknown tenant {tenant!r}: not in the policy and never metered")


class InvalidPeriod(BillingError):
    """The period is empty or inverted, or a date could not be read (exit 2)."""

    exit_code = 2


class NoPricePlan(BillingError):
    """No price applies to (part of) the period: the policy must say (exit 1)."""

    exit_code = 1
