"""The generative student: a causal LM + its short student prompt that writes the answer (math, multiple
choice, summarization, chat), where the classifier scores a fixed label set.

Prompts are tokenized exactly as training tokenizes them (`potstill.training.methods.data.encode_prompt`:
the template's shared prefix and the row part apart, no special tokens), so the tokens a method trained
on are the tokens inference continues. Batches are left-padded and decoded greedily; the answer is read
out of the text by the kind (math's `#### N`, the chosen option of a multiple-choice row, the text
itself for free-text kinds), and the confidence is exp(mean token log-probability) of what was written,
comparable across lengths like the teacher's text confidence.

Saved like the classifier, a plain transformers folder plus `potstill.json`, with `"student":
"generator"`, the kind, the prompt, `response` and `max_new_tokens`; `load_student` opens either.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from potstill.kinds import prompt_row, read_answer
from potstill.models import prepare_tokenizer
from potstill.prompts import PromptTemplate
from potstill.training.classifier import META_FILE, Classifier
from potstill.training.methods.data import encode_prompt
from potstill.training.responses import Response, completion_text


@dataclass(frozen=True)
class Answer:
    """One generated answer: the text, what the kind reads out of it (None: unreadable), the confidence
    and the number of tokens written."""

    response: str
    answer: str | None
    confidence: float
    tokens: int

    @property
    def label(self) -> str | None:
        """What evaluation compares with the gold label (the classifier's `LabelScores.label`)."""
        return self.answer


@dataclass
class Generator:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    prompt: PromptTemplate
    kind: str
    response: Response = "full"
    max_new_tokens: int = 128
    batch_size: int = 16

    # ---- what training needs to agree with inference

    def prepare(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row with the fields the prompt derives from it (multiple choice's `choices_text`)."""
        return prompt_row(self.kind, row)

    def completion(self, row: dict[str, Any]) -> str:
        return completion_text(row, self.kind, self.response)

    # ---- inference

    @torch.no_grad()
    def generate(
        self, rows: list[dict[str, Any]], progress: Callable[[int], None] | None = None
    ) -> list[Answer]:
        ids = [encode_prompt(self.tokenizer, self.prompt, self.prepare(r)) for r in rows]
        order = sorted(range(len(rows)), key=lambda i: len(ids[i]))
        out: list[Answer | None] = [None] * len(rows)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            for i, answer in zip(
                idx, self._batch([ids[i] for i in idx], [rows[i] for i in idx]), strict=True
            ):
                out[i] = answer
            if progress:
                progress(len(idx))
        return [a for a in out if a is not None]

    predict = generate

    def _batch(self, prompts: list[list[int]], rows: list[dict[str, Any]]) -> list[Answer]:
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, p in enumerate(prompts):  # left padding: every row's next token is at the same column
            input_ids[b, width - len(p) :] = torch.tensor(p)
            mask[b, width - len(p) :] = 1
        device = next(self.model.parameters()).device
        res = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        new = res.sequences[:, width:].cpu()
        logp = torch.log_softmax(torch.stack(res.logits, dim=1).float(), dim=-1).cpu()
        out = []
        for r, row in enumerate(rows):
            seq = new[r].tolist()
            end = next((s for s, t in enumerate(seq) if t == self.tokenizer.eos_token_id), len(seq))
            seq = seq[:end]
            text = self.tokenizer.decode(seq, skip_special_tokens=True).strip()
            lps = [float(logp[r, s, t]) for s, t in enumerate(seq)]
            confidence = math.exp(sum(lps) / len(lps)) if lps else 0.0
            out.append(Answer(text, read_answer(self.kind, text, row), confidence, len(seq)))
        return out

    def timed_predict(
        self, rows: list[dict[str, Any]], progress: Callable[[int], None] | None = None
    ) -> tuple[list[Answer], float]:
        start = time.perf_counter()
        out = self.generate(rows, progress)
        return out, time.perf_counter() - start

    def latency_ms(self, rows: list[dict[str, Any]], n: int = 4) -> float:
        """Mean wall time of one-row requests, as a single caller of the model sees it."""
        sample = rows[:n]
        start = time.perf_counter()
        for r in sample:
            self.generate([r])
        return 1000 * (time.perf_counter() - start) / max(len(sample), 1)

    # ---- folders

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        meta = {
            "student": "generator",
            "kind": self.kind,
            "prompt_name": self.prompt.name,
            "prompt": self.prompt.text,
            "response": self.response,
            "max_new_tokens": self.max_new_tokens,
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path, batch_size: int = 16) -> Generator:
        meta = json.loads((Path(folder) / META_FILE).read_text())
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(folder))
        model = AutoModelForCausalLM.from_pretrained(folder)
        model.eval()
        return cls(
            model,
            tokenizer,
            PromptTemplate(meta["prompt_name"], meta["prompt"]),
            meta["kind"],
            meta.get("response", "full"),
            int(meta.get("max_new_tokens", 128)),
            batch_size,
        )


Student = Classifier | Generator


def student_type(folder: Path) -> str:
    """`classifier` or `generator`: what a saved student folder holds."""
    meta = json.loads((Path(folder) / META_FILE).read_text())
    return str(meta.get("student", "classifier"))


def saved_prompt(folder: Path) -> PromptTemplate:
    """The student prompt a saved student was trained with and serves, without loading its weights."""
    meta = json.loads((Path(folder) / META_FILE).read_text())
    return PromptTemplate(meta["prompt_name"], meta["prompt"])


def load_student(folder: Path, batch_size: int = 32) -> Student:
    """The saved student of either type, as its folder says."""
    if student_type(folder) == "generator":
        return Generator.load(folder, batch_size)
    return Classifier.load(folder, batch_size)
