"""What changed between two versions of a dataset, matched by row id."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RowDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    relabeled: list[tuple[str, Any, Any]] = field(default_factory=list)  # (id, old label, new label)
    changed: list[str] = field(default_factory=list)  # same id and label, other fields differ

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.removed)} removed, {len(self.relabeled)} relabeled, "
            f"{len(self.changed)} otherwise changed"
        )


def diff_rows(old: list[dict[str, Any]], new: list[dict[str, Any]], key: str = "id") -> RowDiff:
    a = {str(r[key]): r for r in old}
    b = {str(r[key]): r for r in new}
    relabeled, changed = [], []
    for rid in a.keys() & b.keys():
        if a[rid].get("label") != b[rid].get("label"):
            relabeled.append((rid, a[rid].get("label"), b[rid].get("label")))
        elif a[rid] != b[rid]:
            changed.append(rid)
    return RowDiff(
        added=sorted(b.keys() - a.keys()),
        removed=sorted(a.keys() - b.keys()),
        relabeled=sorted(relabeled),
        changed=sorted(changed),
    )
