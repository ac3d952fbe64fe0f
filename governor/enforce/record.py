"""Where the enforcer's applied policies go: the database, when it can be reached."""

from __future__ import annotations

from collections.abc import Mapping

from governor.config import Config
from governor.enforce.apply import Outcome
from governor.enforce.keeper import Recorder
from governor.policy.model import PricePlan


def db_recorder(cfg: Config) -> tuple[Recorder | None, str]:
    """A recorder writing applied policies and their price plans (see
    :mod:`governor.billing.history`) to the database, or None with the reason."""
    try:
        from governor.store import db, service
    except ImportError as e:
        return None, f"store unavailable ({e})"
    try:
        engine = db.make_engine(cfg.database_url)
        db.check_schema(engine, config_hint=cfg.source or "FILE")
    except Exception as e:  # any store problem: fall back to the log
        return None, str(e).splitlines()[0]
    sessions = db.session_factory(engine)
    from governor.store.nodeuid import read_node_uid

    #: the node uid the daemon made (None before its first start: the node by name)
    uid = read_node_uid(cfg.state_dir)

    def record(digest: str, trigger: str, outcomes: list[Outcome],
               plans: Mapping[str, PricePlan]) -> None:
        from governor.billing.history import record_price_plans
        from governor.enforce.keeper import now

        writes = [{"path": o.action.path, "file": o.action.file or "", "kind": o.action.kind,
                   "value": o.action.new or "", "ok": "yes" if o.ok else f"no: {o.error}"}
                  for o in outcomes]
        with sessions.begin() as session:
            if uid is not None:  # the daemon's identity: a renamed host keeps its row
                service.ensure_node(session=session, name=cfg.node, uid=uid)
            service.record_applied_policy(session=session, node=cfg.node, applied_at=now(),
                                          policy_hash=digest, trigger=trigger, writes=writes)
            record_price_plans(session=session, plans=plans)

    return record, ""
