"""Teacher tuning (benchmarks/support/teacher_tuning.py): the weighted label/explanation loss against a naive
reference, training lowers it, the saved folder loads, and the registered teacher resolves by
`models:/<name>@<alias>` through tasks.tracking (the library itself loads paths only)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from benchmarks.support.teacher_tuning import (
    META_FILE,
    TuningSettings,
    completion_masks,
    completion_text,
    save_teacher,
    split_holdout,
    tune_teacher,
    weighted_completion_loss,
)
from potstill.models import ModelSourceError, load_model, parse_registered
from potstill.prompts import PromptTemplate
from tasks.tracking import registered_model_folder

ROOT = Path(__file__).resolve().parents[1]
PROMPT = PromptTemplate("t", "Premise: {premise}\nHypothesis: {hypothesis}\nAnswer:")
ROWS = [
    {"premise": "A dog runs in a park.", "hypothesis": "An animal is outside.", "label": "entailment",
     "explanation": "a dog is an animal and a park is outside ."},
    {"premise": "A dog runs in a park.", "hypothesis": "The dog sleeps.", "label": "contradiction",
     "explanation": "the dog cannot run and sleep at once ."},
    {"premise": "A dog runs in a park.", "hypothesis": "The dog is happy.", "label": "neutral",
     "explanation": "running does not show the dog is happy ."},
    {"premise": "Two men cook dinner.", "hypothesis": "People make food.", "label": "entailment",
     "explanation": "men are people and cooking dinner is making food ."},
    {"premise": "Two men cook dinner.", "hypothesis": "The men are swimming.", "label": "contradiction",
     "explanation": "the men cannot cook while swimming ."},
    {"premise": "Two men cook dinner.", "hypothesis": "The men are brothers.", "label": "neutral",
     "explanation": "not all men cooking together are brothers ."},
]  # fmt: skip


def test_completion_and_holdout_split():
    assert (
        completion_text("neutral", " the  dog may\nsleep . ") == " neutral\nExplanation: the dog may sleep."
    )
    rows = [{"id": i, "premise": f"p{i // 3}"} for i in range(9)]
    train, held = split_holdout(rows, 2)
    assert [r["id"] for r in held] == [7, 8]
    assert [r["id"] for r in train] == [0, 1, 2, 3, 4, 5]  # row 6 shares premise p2 with the held-out rows
    with pytest.raises(ValueError):
        split_holdout(rows, 9)


def test_completion_masks_split_label_from_explanation():
    nl = 198
    labels = torch.tensor([[-100, -100, 5, 6, nl, 7, 2], [-100, 9, nl, 8, 8, 2, -100]])
    lab, expl = completion_masks(labels, nl)
    assert lab.tolist() == [[0, 0, 1, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0]]
    assert expl.tolist() == [[0, 0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1, 0]]


def _batch(tokenizer, rows):
    """Prompt + completion + EOS, labels -100 on the prompt: what SFTTrainer's collator gives."""
    ids, labels = [], []
    for r in rows:
        p = tokenizer(PROMPT.render(r), add_special_tokens=False)["input_ids"]
        c = tokenizer(completion_text(r["label"], r["explanation"]), add_special_tokens=False)["input_ids"]
        c = [*c, tokenizer.eos_token_id]
        ids.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
        "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
        "labels": torch.tensor([x + [-100] * (width - len(x)) for x in labels]),
    }


def _naive_loss(model, batch, tokenizer, wl: float, we: float) -> float:
    """Straight from the definition: full logits, per row walk the completion, label = tokens before
    the first newline, mean CE of each part over the batch, weighted sum."""
    nl = tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    lab_ce, expl_ce = [], []
    for b in range(batch["input_ids"].shape[0]):
        seen_nl = False
        for t in range(1, batch["input_ids"].shape[1]):
            target = int(batch["labels"][b, t])
            if target == -100:
                continue
            seen_nl = seen_nl or target == nl
            ce = -F.log_softmax(logits[b, t - 1], dim=-1)[target].item()
            (expl_ce if seen_nl else lab_ce).append(ce)
    return wl * sum(lab_ce) / len(lab_ce) + we * sum(expl_ce) / len(expl_ce)


def test_weighted_loss_matches_naive_reference(tiny_model, tokenizer):
    batch = _batch(tokenizer, ROWS[:3])
    nl = tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        loss, label_ce, expl_ce = weighted_completion_loss(tiny_model, batch, nl, 2.0, 0.5)
    assert loss.item() == pytest.approx(_naive_loss(tiny_model, batch, tokenizer, 2.0, 0.5), rel=1e-5)
    assert loss.item() == pytest.approx(2.0 * label_ce + 0.5 * expl_ce, rel=1e-6)
    assert label_ce > 0 and expl_ce > 0


def test_tuning_lowers_loss_saves_loads_and_registers(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    batch = _batch(tokenizer, ROWS)
    with torch.no_grad():
        before = _naive_loss(model, batch, tokenizer, 1.0, 1.0)
    settings = TuningSettings(rows=None, holdout=0, epochs=4, learning_rate=2e-2, batch_size=3, seed=0)
    result = tune_teacher(model, tokenizer, ROWS, PROMPT, settings, tmp_path / "trainer", logging_steps=1)
    assert result.steps == 8 and result.examples == len(ROWS)
    with torch.no_grad():
        after = _naive_loss(model, batch, tokenizer, 1.0, 1.0)
    assert after < 0.85 * before, (before, after)
    assert result.final_loss < result.first_loss
    assert {"label_ce", "explanation_ce", "tokens_per_s"} <= set(result.history[0])

    meta = {"settings": settings.__dict__, "eval": {"esnli_heldout": {"accuracy": 0.5, "macro_f1": 0.4}},
            "seconds": result.seconds}  # fmt: skip
    folder = save_teacher(model, tokenizer, tmp_path / "teacher", meta)
    assert json.loads((folder / META_FILE).read_text())["settings"]["rows"] is None
    loaded, _ = load_model(str(folder), cache_dir=tmp_path / "cache")
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"]).logits
        assert torch.equal(loaded(input_ids=batch["input_ids"]).logits, ref)

    # the benchmark's registration into a project's own MLflow store, resolved by potstill.models
    spec_file = ROOT / "benchmarks" / "tuned_teacher.py"
    module = importlib.util.spec_from_file_location("tuned_teacher", spec_file)
    tuned = importlib.util.module_from_spec(module)
    module.loader.exec_module(tuned)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored after the test
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    project = tmp_path / "project"
    project.mkdir()
    spec = tuned.register_teacher(folder, project, name="tiny-teacher", alias="teacher")
    assert spec == "models:/tiny-teacher@teacher"
    for ref_spec in (spec, "models:/tiny-teacher/1"):
        registered, _ = load_model(str(registered_model_folder(ref_spec, tmp_path / "cache")))
        with torch.no_grad():
            assert torch.equal(registered(input_ids=batch["input_ids"]).logits, ref)
    assert len(list((tmp_path / "cache" / "registry").iterdir())) == 1  # downloaded once, reused
    # registering the same cached folder again reuses its version (same labels cache key on reruns)
    assert tuned.register_teacher(folder, project, name="tiny-teacher", alias="teacher") == spec
    from mlflow.tracking import MlflowClient

    assert [str(v.version) for v in MlflowClient().search_model_versions("name='tiny-teacher'")] == ["1"]
    with pytest.raises(ModelSourceError, match="not in the model registry"):
        registered_model_folder("models:/tiny-teacher@nope", tmp_path / "cache")
    with pytest.raises(ModelSourceError, match="downloaded by the flows"):  # the library loads paths only
        load_model(spec)


def test_parse_registered_refs():
    assert parse_registered("models:/a@champion") == ("a", "champion", None)
    assert parse_registered("models:/a/3") == ("a", None, "3")
    for bad in ("models:/a", "models:/a/x", "models:/@b", "models:/a/1@b"):
        with pytest.raises(ModelSourceError):
            parse_registered(bad)
