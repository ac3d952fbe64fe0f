"""A launch request, from parsed options to the command's exit code: what ``governor
launch`` and each ``governor-launch`` request of the launcher run (the options are parsed
and checked by :func:`governor.placement.cli.run_launch`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from governor.config import Config
from governor.errors import GovernorError, UnknownTenant
from governor.policy import Policy


def launch_request(load: Callable[[], tuple[Config, Policy]], *, tenant: str, group: str,
                   unshare: str | None, image: tuple[str, str] | None, keep: bool,
                   hostname: str | None, user: str | None, env: Mapping[str, str],
                   command: tuple[str, ...], caller: Mapping[str, str]) -> int:
    """Run ``command`` (or a container of ``image``, a parsed ``(name, tag)``) in
    ``tenant/group`` of the policy ``load()`` gives; returns the exit code.  ``env``: the
    variables passed explicitly (``--env``, parsed); ``caller``: the environment of who
    asked, of which the command gets the terminal and locale variables; governor's own
    work (mkfs, mount) keeps governor's environment."""
    from governor.driver import open_tree
    from governor.placement.identity import LaunchError
    from governor.placement.launch import Restart, where_to_launch
    from governor.placement.launch import launch as run
    from governor.policy.model import RESTART_BACKOFF_CAP_US

    ref, passed = image, dict(env)
    try:
        c, pol = load()
    except GovernorError as e:
        raise LaunchError(str(e)) from e
    t = pol.tenants.get(tenant)
    if t is None:
        raise UnknownTenant(tenant, where=f"not in the policy {c.policy}",
                            known=list(pol.tenants))
    if group not in t.groups:
        raise UnknownTenant(tenant, group=group, where=f"not in the policy {c.policy}",
                            known=[g.path for g in pol.groups()])
    oom = t.groups[group].oom
    restart = None
    if "restart" in oom.actions:
        restart = Restart(oom.restart_max, oom.restart_backoff_us / 1e6,
                          RESTART_BACKOFF_CAP_US / 1e6)
    try:
        tree = open_tree(c)
        rel = where_to_launch(tree, f"{tenant}/{group}")
    except GovernorError as e:
        raise LaunchError(str(e)) from e
    with tree:
        if ref is not None:
            from governor.image.store import ImageStore
            from governor.image.writable import Pool
            from governor.placement.container import launch_image

            pool = Pool.from_config(c)
            code = launch_image(tree.fs, rel, ImageStore(c.state_dir), ref,
                                list(command), state_dir=c.state_dir, unshare=unshare,
                                hostname=hostname, user=user, env=passed, keep=keep,
                                restart=restart, group=f"{tenant}/{group}", pool=pool,
                                storage_max=t.groups[group].storage_max, caller=caller)
        else:
            code = run(tree.fs, rel, list(command), unshare=unshare,
                       hostname=hostname, user=user, env=passed,
                       restart=restart, caller=caller)
    return code


def warm_up(c: Config) -> None:
    """Import what a launch runs (and open the tree once: the driver's modules), so a
    shim starts with nothing left to import."""
    import governor.image.store
    import governor.image.writable
    import governor.placement.container
    import governor.placement.launch
    import governor.placement.rootfs  # noqa: F401
    from governor.driver import open_tree

    try:
        open_tree(c).close()
    except GovernorError as e:  # each launch will say it, as governor launch would
        import logging

        logging.getLogger("governor.launcher").warning("launcher: %s", e)
