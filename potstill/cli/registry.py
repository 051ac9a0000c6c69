"""`potstill promote`: the promotion gate applied by hand, and rollback, for a task's registered model."""

from __future__ import annotations

import argparse
from pathlib import Path

from potstill.config import RunConfig
from potstill.errors import UserError


def promote(args: argparse.Namespace, cfg: RunConfig, root: Path) -> int:
    from potstill.cli.catalog import catalog_for
    from potstill.data.tasks import registry_target
    from potstill.operations.gate import RollbackError
    from tasks.register import promote_version, rollback
    from tasks.tracking import configure

    target = registry_target(catalog_for(root).task(cfg.task), cfg.registry)
    configure(root)
    name = target.model_name
    if args.rollback and args.version:
        raise UserError("give either VERSION or --rollback")
    if not args.rollback and not args.version:
        raise UserError("promote needs VERSION (or --rollback)")
    try:
        if args.rollback:
            done = rollback(target)
            print(f"{name}: champion is version {done['champion']} again (version {done['demoted']} demoted)")
            return 0
        decision, applied = promote_version(cfg, target, args.version, force=args.force)
    except (RollbackError, ValueError, LookupError) as exc:
        raise UserError(str(exc)) from exc
    for check in decision.checks:
        print(f"  [{'pass' if check.passed else 'FAIL'}] {check.reason}")
    if applied:
        forced = " (forced past the gate)" if args.force and not decision.promote else ""
        print(f"{name} version {args.version} is champion{forced}")
        return 0
    print(f"{name} version {args.version} not promoted: {'; '.join(decision.reasons)} (--force overrides)")
    return 1
