"""``governor policy plan`` and ``governor policy apply`` (joined to the ``policy`` group)."""

from __future__ import annotations

import getpass
import logging
import os
import sys
from collections.abc import Callable

import click

from governor.config import Config
from governor.driver import open_tree
from governor.enforce.apply import apply_plan
from governor.enforce.desired import desired_state
from governor.enforce.plan import make_plan
from governor.enforce.record import db_recorder
from governor.policy import load_policy

log = logging.getLogger("governor.enforce")


def register(main: click.Group) -> None:
    from governor.clikit import FORMAT, config_options, emit_json

    group = main.commands.get("policy")
    if not isinstance(group, click.Group):
        return

    @group.command("plan")
    @config_options
    @FORMAT
    def plan_cmd(cfg: Callable[[], Config], fmt: str) -> None:
        """Show the writes that would make the kernel match the policy (nothing is written)."""
        c = cfg()
        pol = load_policy([c.policy])
        for w in pol.warnings:  # an empty policy, overlapping rules: said before the plan
            click.echo(f"governor: {w}", err=True)
        with open_tree(c, writes=False) as t:
            plan = make_plan(t.fs, t.layout, desired_state(pol),
                             iocost_devices=c.iocost_devices)
        if fmt == "json":
            emit_json({"digest": plan.digest, "summary": plan.summary(),
                       "actions": [a.as_dict() for a in plan.actions]})
            return
        for a in plan.actions:
            click.echo(str(a))
        click.echo(plan.summary_line())

    @group.command("apply")
    @config_options
    @FORMAT
    def apply_cmd(cfg: Callable[[], Config], fmt: str) -> None:
        """Validate the policy, then make the kernel match it once, reporting each write.

        Exit 0 when every write succeeded, 1 when one failed (the others were still made).
        """
        c = cfg()
        pol = load_policy([c.policy])   # validation finishes before the first write
        for w in pol.warnings:
            click.echo(f"governor: {w}", err=True)
        with open_tree(c) as t:
            plan = make_plan(t.fs, t.layout, desired_state(pol),
                             iocost_devices=c.iocost_devices)
            outcomes = apply_plan(t.fs, plan, execute=t.executor(plan))
        recorder, why = db_recorder(c)
        trigger = f"cli:{getpass.getuser()}@pid{os.getpid()}"
        if recorder is not None:
            recorder(plan.digest, trigger, outcomes, pol.plans)
            where = f"recorded in {c.database_url.split('@')[-1]}"
        else:
            where = f"not recorded in the database ({why})"
            for o in outcomes:
                log.info("applied write", extra={"outcome": str(o)})
        failed = [o for o in outcomes if not o.ok]
        if fmt == "json":
            emit_json({"digest": plan.digest, "outcomes": [o.as_dict() for o in outcomes],
                       "notes": [a.reason for a in plan.actions if a.kind == "note"],
                       "failed": len(failed), "recorded": recorder is not None})
        else:
            for a in plan.actions:
                if a.kind in ("note", "keep"):
                    click.echo(str(a))
            for o in outcomes:
                click.echo(str(o))
            click.echo(f"Applied policy {plan.digest[:12]}: {len(outcomes) - len(failed)} "
                       f"writes ok, {len(failed)} failed; {where}.")
        if failed:
            sys.exit(1)


def register_run(main: click.Group) -> None:
    from governor.clikit import config_options

    @main.command("run")
    @config_options
    @click.option("--reconcile-interval", metavar="DURATION",
                  help="override enforce.reconcile_interval (e.g. 5s)")
    @click.option("--sample-interval", metavar="DURATION",
                  help="override sampling.interval (e.g. 2s)")
    def run_cmd(cfg: Callable[[], Config], reconcile_interval: str | None,
                sample_interval: str | None) -> None:
        """Run the governor: apply the policy, keep it enforced, reload on change/SIGHUP."""
        from governor.config import parse_duration
        from governor.daemon import Daemon
        from governor.log import setup_logging

        c = cfg()
        if reconcile_interval:
            c.reconcile_interval = parse_duration(reconcile_interval,
                                                  key="--reconcile-interval", file=None)
        if sample_interval:
            c.sample_interval = parse_duration(sample_interval, key="--sample-interval",
                                               file=None)
        setup_logging(c.log_format, c.log_level)
        sys.exit(Daemon(c).run())
