"""Classification metrics written from their definitions, plus the confusion-matrix plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def accuracy(gold: Sequence[str], pred: Sequence[str]) -> float:
    _same_length(gold, pred)
    return sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold) if gold else 0.0


def agreement(a: Sequence[str], b: Sequence[str]) -> float:
    """Share of rows where two models predict the same label (teacher-student agreement)."""
    return accuracy(a, b)


def confusion_matrix(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """m[i][j] = rows with gold label i predicted as j; predictions outside `labels` are not counted."""
    _same_length(gold, pred)
    index = {lab: i for i, lab in enumerate(labels)}
    m = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, pred, strict=True):
        if g in index and p in index:
            m[index[g]][index[p]] += 1
    return m


def per_class_recall(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    m = confusion_matrix(gold, pred, labels)
    return {lab: (m[i][i] / sum(m[i]) if sum(m[i]) else 0.0) for i, lab in enumerate(labels)}


def macro_f1(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean over labels of F1 = 2PR/(P+R); a label never predicted nor present scores 0."""
    _same_length(gold, pred)
    scores = []
    for lab in labels:
        tp = sum(g == lab and p == lab for g, p in zip(gold, pred, strict=True))
        fp = sum(g != lab and p == lab for g, p in zip(gold, pred, strict=True))
        fn = sum(g == lab and p != lab for g, p in zip(gold, pred, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def classification_scores(
    gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]
) -> dict[str, float]:
    """What a fixed-label kind is judged by: accuracy, macro-F1 and each label's recall (`recall_<label>`)."""
    out = {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred, labels)}
    out |= {f"recall_{lab}": rec for lab, rec in per_class_recall(gold, pred, labels).items()}
    return out


def plot_confusion(
    matrices: dict[str, list[list[int]]], labels: Sequence[str], path: Path, title: str = ""
) -> Path:
    """One confusion-matrix panel per model (e.g. teacher, student) side by side, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(3.6 * len(matrices), 3.4), squeeze=False)
    for ax, (name, m) in zip(axes[0], matrices.items(), strict=True):
        total = sum(map(sum, m)) or 1
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(max(r) for r in m) or 1)
        for i, row in enumerate(m):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v}\n{v / total:.0%}", ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _same_length(a: Sequence[str], b: Sequence[str]) -> None:
    if len(a) != len(b):
        raise ValueError(f"gold and predictions differ in length: {len(a)} vs {len(b)}")
