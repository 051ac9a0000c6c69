"""Which registry aliases a new student version gets: a pure decision with its reasons."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AliasDecision:
    aliases: list[str]
    reasons: list[str]

    @property
    def champion(self) -> bool:
        return "champion" in self.aliases


def decide_aliases(metric: str, candidate: float, champion: float | None) -> AliasDecision:
    """Every new version is `challenger`; it is also `champion` when none exists or it beats the champion."""
    if champion is None:
        return AliasDecision(
            ["challenger", "champion"], ["no champion yet: the first version becomes champion"]
        )
    if candidate > champion:
        return AliasDecision(
            ["challenger", "champion"], [f"{metric} {candidate:.4f} beats the champion's {champion:.4f}"]
        )
    return AliasDecision(
        ["challenger"], [f"{metric} {candidate:.4f} does not beat the champion's {champion:.4f}"]
    )
