"""A model + prompt template + label set that predicts labels for rows: teacher, student, served model.

Saved as a plain transformers folder plus `potstill.json` (labels, prompt name and text), so the
registered student carries the exact student prompt it was trained with.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from potstill.labeling.scoring import LabelScores, score_labels
from potstill.models import prepare_tokenizer
from potstill.prompts import PromptTemplate, label_completion

META_FILE = "potstill.json"


@dataclass
class Classifier:
    """Keeps the prompt prefix's key/value cache between calls: build a new one after training the model."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    prompt: PromptTemplate
    labels: list[str]
    batch_size: int = 32
    reuse_prefix: bool = True
    _prefix_memo: dict[tuple[int, str], Any] = field(default_factory=dict, repr=False)

    def prepare(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row as the prompt renders it (a classifier's prompt derives no fields)."""
        return row

    def completion(self, row: dict[str, Any]) -> str:
        """What training teaches after the prompt: ` <label>`, the completion `predict` scores."""
        return label_completion(row["label"])

    def predict(
        self, rows: list[dict[str, Any]], progress: Callable[[int], None] | None = None
    ) -> list[LabelScores]:
        prefix, _ = self.prompt.split()
        bodies = [self.prompt.render_row(r) for r in rows]
        return score_labels(
            self.model,
            self.tokenizer,
            prefix,
            bodies,
            self.labels,
            self.batch_size,
            self.reuse_prefix,
            progress,
        )

    def timed_predict(
        self, rows: list[dict[str, Any]], progress: Callable[[int], None] | None = None
    ) -> tuple[list[LabelScores], float]:
        start = time.perf_counter()
        out = self.predict(rows, progress)
        return out, time.perf_counter() - start

    def latency_ms(self, rows: list[dict[str, Any]], n: int = 16) -> float:
        """Mean wall time of one-row requests, as a single caller of the model sees it."""
        sample = rows[:n]
        start = time.perf_counter()
        for r in sample:
            self.predict([r])
        return 1000 * (time.perf_counter() - start) / max(len(sample), 1)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        meta = {"labels": self.labels, "prompt_name": self.prompt.name, "prompt": self.prompt.text}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path, batch_size: int = 32) -> Classifier:
        meta = json.loads((Path(folder) / META_FILE).read_text())
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(folder))
        model = AutoModelForCausalLM.from_pretrained(folder)
        model.eval()
        return cls(
            model, tokenizer, PromptTemplate(meta["prompt_name"], meta["prompt"]), meta["labels"], batch_size
        )
