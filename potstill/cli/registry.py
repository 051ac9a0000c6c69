"""`potstill promote`: the promotion gate applied by hand, and rollback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from potstill.config import RunConfig


def promote(args: argparse.Namespace, cfg: RunConfig, root: Path) -> int:
    from potstill.gate import RollbackError
    from tasks.register import promote_version, rollback
    from tasks.tracking import configure

    configure(root)
    name = cfg.registry.model_name
    try:
        if args.rollback:
            if args.version:
                print("potstill: give either VERSION or --rollback", file=sys.stderr)
                return 2
            done = rollback(cfg)
            print(f"{name}: champion is version {done['champion']} again (version {done['demoted']} demoted)")
            return 0
        if not args.version:
            print("potstill: promote needs VERSION (or --rollback)", file=sys.stderr)
            return 2
        decision, applied = promote_version(cfg, args.version, force=args.force)
    except (RollbackError, ValueError, LookupError) as exc:
        print(f"potstill: {exc}", file=sys.stderr)
        return 2
    for check in decision.checks:
        print(f"  [{'pass' if check.passed else 'FAIL'}] {check.reason}")
    if applied:
        print(f"{name} version {args.version} is champion" + (" (forced past the gate)" if args.force and
              not decision.promote else ""))  # fmt: skip
        return 0
    print(f"{name} version {args.version} not promoted: {'; '.join(decision.reasons)} (--force overrides)")
    return 1
