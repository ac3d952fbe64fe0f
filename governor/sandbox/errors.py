"""The sandbox's errors: each message says what to run to fix it."""

from __future__ import annotations

from governor.errors import GovernorError

__all__ = ["SandboxError", "SandboxNotReady"]


class SandboxError(GovernorError):
    """The sandbox cannot be set up or booted; the message says what to run to fix it."""


class SandboxNotReady(SandboxError):
    """The cache is missing or stale: run ``governor sandbox setup``."""
