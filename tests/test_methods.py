"""Distillation methods (potstill/training/methods/): each trains a real tiny student (the conftest Llama
with the real
SmolLM2 tokenizer) from a real tiny teacher, through its TRL trainer subclass, and moves the student toward
the teacher; logit_online's loss is pinned against a naive full-logit reference; vocabulary checks, LoRA
merging, the step-by-step inference prompt and config validation; and one run of the real distill flow."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import CACHE, build_tiny_llama
from safetensors.torch import load_file
from transformers import LlamaForCausalLM
from trl import DistillationTrainer, SFTTrainer

from potstill.config import (
    ConfigError,
    ConfigMovedWarning,
    DistillConfig,
    StudentConfig,
    load_config,
    validate,
)
from potstill.prompts import PromptTemplate
from potstill.training.classifier import Classifier
from potstill.training.methods import DistillInputs, check_vocab, train
from potstill.training.methods.hidden_states import default_layer_map
from potstill.training.methods.hidden_states import make_trainer as hidden_trainer
from potstill.training.methods.logit_online import make_trainer as online_trainer
from potstill.training.methods.on_policy import make_trainer as on_policy_trainer
from potstill.training.methods.step_by_step import RATIONALE_PREFIX
from potstill.training.methods.step_by_step import make_trainer as sbs_trainer

ROOT = Path(__file__).resolve().parents[1]
STUDENT_PROMPT = PromptTemplate("student", "Review: {text}\nSentiment:")
TEACHER_PROMPT = PromptTemplate("teacher", "Classify each review.\n\nReview: {text}\nSentiment:")
TEXTS = [
    ("a warm and witty film", "positive"),
    ("a dull , tedious mess", "negative"),
    ("smart , moving and funny", "positive"),
    ("the plot makes no sense at all", "negative"),
]


def _rows(n: int = 16, rationale_every: int = 2) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        text, label = TEXTS[i % len(TEXTS)]
        r = {"id": f"r{i}", "text": text, "label": label}
        if rationale_every and i % rationale_every == 0:
            r["rationale"] = f"the review calls it {text.split()[1]}, so it is {label}"
        rows.append(r)
    return rows


def _teacher(tokenizer, name: str, layers: int = 6, hidden: int = 64, vocab_size: int | None = None) -> Path:
    """A tiny teacher with a sharpened output (final norm × 8), so its distribution is far from the
    near-uniform one of a random student and 'moving toward the teacher' is measurable."""
    folder = CACHE / "test-models" / f"{name}-v1"
    if (folder / "config.json").exists():
        return folder
    raw = build_tiny_llama(folder.with_name(folder.name + ".raw"), tokenizer, layers, 1, hidden, vocab_size)
    model = LlamaForCausalLM.from_pretrained(raw)
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


@pytest.fixture(scope="module")
def teacher_dir(tokenizer) -> Path:
    return _teacher(tokenizer, "tiny-teacher-6x64-sharp")


def _inputs(
    student_dir: Path,
    tokenizer,
    teacher: Path | None,
    out: Path,
    *,
    steps: int = 6,
    lr: float = 3e-3,
    rows: list[dict[str, Any]] | None = None,
    method: str = "sft",
    lora: dict[str, Any] | None = None,
    **options: Any,
) -> DistillInputs:
    """The method's own options (`distill.<method>`) as keyword arguments."""
    return DistillInputs(
        model=LlamaForCausalLM.from_pretrained(student_dir, dtype=torch.float32),
        tokenizer=tokenizer,
        rows=rows or _rows(),
        prompt=STUDENT_PROMPT,
        student=StudentConfig(
            model="tiny", layers=None, max_steps=steps, batch_size=4, logging_steps=1, learning_rate=lr
        ),
        distill=DistillConfig.model_validate({"method": method, method: options, "lora": lora or {}}),
        output_dir=out,
        seed=0,
        teacher_model=str(teacher) if teacher else None,
        teacher_prompt=TEACHER_PROMPT,
    )


def _ids(tokenizer, template: PromptTemplate, row: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) written out the way potstill.labeling.scoring reads a label."""
    prefix, _ = template.split()
    p = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    p += tokenizer(template.render_row(row), add_special_tokens=False)["input_ids"]
    c = tokenizer(" " + row["label"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p, c


@torch.no_grad()
def _completion_logits(model, tokenizer, template, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Naive: full logits of each row alone, rows at the positions predicting the completion tokens."""
    out, targets = [], []
    for row in rows:
        p, c = _ids(tokenizer, template, row)
        logits = model(input_ids=torch.tensor([p + c])).logits[0].double()
        out.append(logits[len(p) - 1 : len(p) + len(c) - 1])
        targets.append(torch.tensor(c))
    return torch.cat(out), torch.cat(targets)


def _kd(student, teacher, tokenizer, rows, teacher_prompt=TEACHER_PROMPT, t: float = 1.0) -> float:
    """Mean forward KL(teacher || student) at the completion positions, from the definition."""
    s, _ = _completion_logits(student, tokenizer, STUDENT_PROMPT, rows)
    q, _ = _completion_logits(teacher, tokenizer, teacher_prompt, rows)
    log_p, log_q = torch.log_softmax(q / t, -1), torch.log_softmax(s / t, -1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean() * t * t)


def _load(folder: Path):
    return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def test_logit_online_compute_loss_equals_naive_full_logits(tiny_model_dir, tokenizer, teacher_dir, tmp_path):
    inputs = _inputs(
        tiny_model_dir,
        tokenizer,
        teacher_dir,
        tmp_path,
        method="logit_online",
        temperature=2.0,
        kd_weight=0.7,
        ce_weight=0.3,
        chunk_size=3,  # several chunks per batch
    )
    trainer = online_trainer(inputs)
    assert isinstance(trainer, SFTTrainer)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        got = float(trainer.compute_loss(trainer.model, batch))
    # which rows the batch holds: read back from the unpadded student sequences
    pairs = zip(batch["input_ids"], batch["attention_mask"], strict=True)
    texts = [tokenizer.decode(ids[m.bool()]) for ids, m in pairs]
    rows = [next(r for r in _rows() if f" {r['text']}\n" in t) for t in texts]
    s, targets = _completion_logits(inputs.model.eval(), tokenizer, STUDENT_PROMPT, rows)
    q, _ = _completion_logits(_load(teacher_dir), tokenizer, TEACHER_PROMPT, rows)
    t = 2.0
    log_p, log_q = torch.log_softmax(q / t, -1), torch.log_softmax(s / t, -1)
    kd = (log_p.exp() * (log_p - log_q)).sum(-1).mean() * t * t
    ce = F.cross_entropy(s, targets)
    assert batch["labels_flat"].tolist() == targets.tolist()  # aligned: the same completion tokens
    assert got == pytest.approx(float(0.7 * kd + 0.3 * ce), rel=1e-5)
    assert "Classify each review." in tokenizer.decode(batch["teacher_input_ids"][0])


def test_logit_online_trains_student_toward_teacher(tiny_model_dir, tokenizer, teacher_dir, tmp_path):
    logged: list[dict[str, float]] = []
    inputs = _inputs(tiny_model_dir, tokenizer, teacher_dir, tmp_path, method="logit_online", steps=6)
    inputs.on_log = lambda step, logs: logged.append(logs)
    teacher, rows = _load(teacher_dir), _rows(4)
    before = _kd(inputs.model.eval(), teacher, tokenizer, rows)
    result = train(inputs)
    after = _kd(inputs.model, teacher, tokenizer, rows)
    assert result.method == "logit_online" and result.steps == 6
    assert after < 0.8 * before, (before, after)
    steps = [h for h in logged if "loss" in h]
    assert all(h["tokens_per_s"] > 0 and "kd_loss" in h and "ce_loss" in h for h in steps)


def test_hidden_states_projects_wider_teacher_and_matches_it(tiny_model_dir, tokenizer, tmp_path):
    wide = _teacher(tokenizer, "tiny-teacher-6x96-sharp", layers=6, hidden=96)
    inputs = _inputs(tiny_model_dir, tokenizer, wide, tmp_path, method="hidden_states", loss="mse")
    keys_before = set(inputs.model.state_dict())
    trainer = hidden_trainer(inputs)
    assert trainer.pairs == [(0, 1), (1, 2), (2, 4), (3, 5)]  # evenly spaced, last to last
    assert trainer.projections is not None and trainer.projections[0].weight.shape == (96, 64)
    proj0 = trainer.projections[0].weight.detach().clone()
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        first = trainer.compute_loss(trainer.model, batch)
    hidden_first = trainer._meter_parts["hidden"][-1]
    trainer.train()
    with torch.no_grad():
        last = trainer.compute_loss(trainer.model, batch)
    assert float(last) < float(first)
    assert trainer._meter_parts["hidden"][-1] < hidden_first
    assert not torch.equal(trainer.projections[0].weight.detach(), proj0)  # learned with the student
    assert set(inputs.model.state_dict()) == keys_before  # projections are not part of the student


def test_default_layer_map():
    assert default_layer_map(3, 30, [0, 13, 29]) == [(0, 0), (1, 13), (2, 29)]
    assert default_layer_map(2, 4, None) == [(0, 1), (1, 3)]
    assert default_layer_map(4, 4, None) == [(i, i) for i in range(4)]


def test_step_by_step_two_tasks_and_saved_student_predicts_unprefixed(tiny_model_dir, tokenizer, tmp_path):
    # one label for every row: in a few steps a random tiny model learns the label word, not the texts
    rows = [{**r, "label": "positive"} for r in _rows()]
    inputs = _inputs(
        tiny_model_dir, tokenizer, None, tmp_path, method="step_by_step", rationale_weight=0.5, rows=rows
    )
    trainer = sbs_trainer(inputs)
    batches = list(trainer.get_train_dataloader())
    assert sum(int(b["attention_mask"].shape[0]) for b in batches) == 16  # every row: label task
    rationale_rows = sum(
        int(b["rationale_input_ids"].shape[0]) for b in batches if "rationale_input_ids" in b
    )
    assert rationale_rows == 8  # only the rows that have a rationale
    b = next(b for b in batches if "rationale_input_ids" in b)
    label_text = tokenizer.decode(b["input_ids"][0][b["attention_mask"][0].bool()])
    assert label_text.startswith("Review:") and label_text.endswith(tokenizer.eos_token)
    rationale_text = tokenizer.decode(b["rationale_input_ids"][0][b["rationale_attention_mask"][0].bool()])
    assert rationale_text.startswith(RATIONALE_PREFIX + "Review:") and "so it is" in rationale_text

    labels = ["negative", "positive"]
    rows = rows[:4]
    Classifier(inputs.model, tokenizer, STUDENT_PROMPT, labels).save(tmp_path / "before")
    before = Classifier.load(tmp_path / "before").predict(rows)
    result = train(inputs)
    assert {"ce_loss", "rationale_loss"} <= set(result.history[-1])
    Classifier(inputs.model, tokenizer, STUDENT_PROMPT, labels).save(tmp_path / "after")
    after = Classifier.load(tmp_path / "after").predict(rows)  # the plain prompt, the existing scorer
    p_before = sum(s.distribution[r["label"]] for s, r in zip(before, rows, strict=True)) / len(rows)
    p_after = sum(s.distribution[r["label"]] for s, r in zip(after, rows, strict=True)) / len(rows)
    assert p_after > p_before + 0.05, (p_before, p_after)


def test_on_policy_is_trl_distillation_trainer_and_moves_toward_teacher(
    tiny_model_dir, tokenizer, teacher_dir, tmp_path
):
    inputs = _inputs(
        tiny_model_dir,
        tokenizer,
        teacher_dir,
        tmp_path,
        method="on_policy",
        steps=6,
        lmbda=0.5,
        max_new_tokens=3,
    )
    teacher, rows = _load(teacher_dir), _rows(4)
    # on-policy KD compares both models on the student's tokens: measure on the student prompt
    before = _kd(inputs.model.eval(), teacher, tokenizer, rows, STUDENT_PROMPT)
    trainer = on_policy_trainer(inputs)
    assert isinstance(trainer, DistillationTrainer) and trainer.beta == 0.0  # forward_kl
    trainer.train()
    after = _kd(inputs.model, teacher, tokenizer, rows, STUDENT_PROMPT)
    assert trainer.batches[True] > 0 and trainer.batches[False] > 0  # both sampled and teacher-label batches
    assert after < 0.9 * before, (before, after)


def test_lora_saves_a_merged_plain_model(tiny_model_dir, tokenizer, teacher_dir, tmp_path):
    inputs = _inputs(
        tiny_model_dir,
        tokenizer,
        teacher_dir,
        tmp_path,
        method="logit_online",
        steps=3,
        lora={"enabled": True, "r": 4},
    )
    original = {k: v.clone() for k, v in inputs.model.state_dict().items()}
    result = train(inputs)
    assert result.steps == 3
    folder = Classifier(inputs.model, tokenizer, STUDENT_PROMPT, ["negative", "positive"]).save(
        tmp_path / "s"
    )
    saved = load_file(folder / "model.safetensors")
    assert not any("lora" in k for k in saved) and set(saved) <= set(original)
    changed = [k for k in saved if not torch.equal(saved[k], original[k])]
    assert any("q_proj" in k for k in changed) and not any("embed" in k or "norm" in k for k in changed)
    back = Classifier.load(folder)
    ids = torch.tensor([tokenizer("Review: fine\nSentiment: positive")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(back.model(ids).logits, inputs.model(ids).logits, atol=1e-5)


def test_vocab_mismatch_names_both_sizes_before_training(tiny_model_dir, tokenizer, tmp_path):
    small = _teacher(tokenizer, "tiny-teacher-2x64-vocab1000", layers=2, vocab_size=1000)
    inputs = _inputs(tiny_model_dir, tokenizer, small, tmp_path / "t", method="hidden_states")
    with pytest.raises(ValueError, match=r"hidden_states.*1000.*49152|hidden_states.*49152.*1000"):
        train(inputs)
    assert not (tmp_path / "t").exists()  # refused before any trainer was built
    # sequence-level methods do not compare logits: any teacher vocabulary goes
    assert check_vocab(inputs.model, _load(small), tokenizer, tokenizer, "step_by_step") is None


def test_padded_teacher_vocab_is_truncated(tiny_model_dir, tokenizer, tmp_path):
    padded = _teacher(tokenizer, "tiny-teacher-2x64-padded", layers=2, vocab_size=len(tokenizer) + 64)
    teacher = _load(padded)
    assert check_vocab(_load(tiny_model_dir), teacher, tokenizer, tokenizer, "logit_online") == len(tokenizer)
    inputs = _inputs(tiny_model_dir, tokenizer, padded, tmp_path, method="logit_online")
    trainer = online_trainer(inputs)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        got = float(trainer.compute_loss(trainer.model, batch))
        t_hidden = teacher.model(batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"])
        t_logits = teacher.lm_head(t_hidden.last_hidden_state[batch["teacher_rows"], batch["teacher_cols"]])
        s_logits = inputs.model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    log_p = torch.log_softmax(t_logits[:, : len(tokenizer)].double(), -1)
    log_q = torch.log_softmax(s_logits[batch["rows"], batch["cols"]].double(), -1)
    assert got == pytest.approx(float((log_p.exp() * (log_p - log_q)).sum(-1).mean()), rel=1e-5)


@pytest.mark.parametrize(
    ("distill", "message"),
    [
        ({"logit_online": {"beta": 1.5}}, "distill.logit_online.beta"),
        ({"logit_offline": {"temperature": 0}}, "distill.logit_offline.temperature"),
        ({"hidden_states": {"kd_weight": -1}}, "distill.hidden_states.kd_weight"),
        ({"method": "logit_online", "logit_online": {"kd_weight": 0, "ce_weight": 0}}, "both 0"),
        ({"hidden_states": {"kd_weight": 0, "weight": 0}}, "all 0"),
        ({"step_by_step": {"label_weight": 0}}, "distill.step_by_step.label_weight"),
        ({"on_policy": {"divergence": "tv"}}, "distill.on_policy.divergence"),
        ({"hidden_states": {"layer_map": [[0, 1], [0, 2]]}}, "twice"),
        ({"hidden_states": {"layer_map": [[-1, 0]]}}, ">= 0"),
        ({"method": "distill_harder"}, "distill.method"),
        ({"on_policy": {"lmbda": 2}}, "distill.on_policy.lmbda"),
        ({"sft": {"temperature": 2}}, "distill.sft.temperature: unknown key"),
    ],
)
def test_distill_config_validation(distill: dict[str, Any], message: str):
    with pytest.raises(ConfigError, match=message):
        validate({"distill": distill})


def test_params_yaml_distill_section_is_the_default():
    assert load_config(ROOT / "params.yaml").distill == DistillConfig()
    layer_map = validate(
        {"distill": {"hidden_states": {"layer_map": [[0, 0], [1, 3]]}}}
    ).distill.hidden_states
    assert layer_map.layer_map == [(0, 0), (1, 3)]


def test_old_flat_distill_keys_still_work_from_their_new_place():
    """A params.yaml from before the per-method sections: one-to-one moves are read from the old key
    (with a warning naming the new place); a key shared by several methods reaches each of them."""
    with pytest.warns(ConfigMovedWarning) as seen:
        cfg = validate(
            {"distill": {"method": "logit_online", "temperature": 2.0, "lora": True, "lora_r": 4,
                         "lmbda": 0.5, "layer_map": [[0, 1]], "divergence": "tv"}}
        )  # fmt: skip
    d = cfg.distill
    assert d.logit_online.temperature == d.logit_offline.temperature == d.on_policy.temperature == 2.0
    assert d.lora.enabled and d.lora.r == 4 and d.on_policy.lmbda == 0.5
    assert d.hidden_states.layer_map == [(0, 1)] and d.logit_online.divergence == "tv"
    assert d.on_policy.divergence == "forward_kl"  # on_policy has no tv: it keeps its own default
    assert any("distill.lmbda is now distill.on_policy.lmbda" in str(w.message) for w in seen)


@pytest.mark.parametrize(
    ("old", "where"),
    [
        ({"teacher": {"kind": "nli"}}, "`kind:` in catalog/tasks"),
        ({"teacher": {"prompt": "x"}}, "templates: {teacher"),
        ({"student": {"prompt": "x"}}, "templates: {student"),
        ({"data": {"prompts": "polarity_prompts"}}, "potstill task new"),
    ],
)
def test_keys_that_moved_into_the_task_stop_naming_their_place(old: dict[str, Any], where: str):
    with pytest.raises(ConfigError, match=re.escape(where)):
        validate(old)


def test_backend_sections_reach_the_backend():
    cfg = validate(
        {"teacher": {"backend": "vllm", "store_signals": True, "top_logprobs": 20,
                     "vllm": {"tensor_parallel_size": 2, "max_model_len": 4096, "gpu_memory_utilization":
                     0.8}}}
    )  # fmt: skip
    settings = cfg.teacher.backend_settings()
    assert settings["backend"] == "vllm" and settings["max_logprobs"] == 20  # raised to top_logprobs
    assert settings["engine"] == {
        "tensor_parallel_size": 2,
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.8,
    }
    with pytest.raises(ConfigError, match=r"teacher\.openai\.base_url"):
        validate({"teacher": {"backend": "openai"}})
    with pytest.warns(ConfigMovedWarning):
        old = validate(
            {"teacher": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "batch_size": 4}}
        )
    assert old.teacher.openai.base_url == "http://127.0.0.1:9/v1" and old.teacher.transformers.batch_size == 4


@pytest.mark.slow
def test_logit_online_trains_through_the_distill_flow(prefect_api, project: Path, tiny_model_dir: Path):
    """`potstill run` with distill.method=logit_online: the flow's train task loads the teacher itself,
    prompts it with the teacher prompt and logs the loss parts per logging step to MLflow."""
    import mlflow
    import pandas as pd
    import yaml
    from mlflow.tracking import MlflowClient

    from flows.distill import distill

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["teacher"]["model"] = str(tiny_model_dir)
    params["data"].update(max_prompts=32, max_eval_rows=16)
    params["student"].update(layers=[0, 3], batch_size=8, logging_steps=1, max_steps=3, eval_batch_size=16)
    params["distill"].update(method="logit_online")
    params["distill"]["logit_online"].update(ce_weight=0.5)
    out = distill(params=params, project=str(project))

    run = MlflowClient().get_run(out["run_id"])
    assert run.info.status == "FINISHED" and out["train_steps"] == 3
    assert run.data.tags["potstill.distill_method"] == "logit_online"
    assert run.data.params["distill.method"] == "logit_online"
    client = MlflowClient()
    for name in ("train_kd_loss", "train_ce_loss", "train_tokens_per_s", "train_loss"):
        history = client.get_metric_history(out["run_id"], name)
        assert [m.step for m in history] == [1, 2, 3], name
    kd = client.get_metric_history(out["run_id"], "train_kd_loss")
    assert all(m.value >= 0 for m in kd)
    model = mlflow.pyfunc.load_model(f"models:/polarity-student/{out['registered']['version']}")
    pred = model.predict(pd.DataFrame({"text": ["a wonderful film", "a tedious mess"]}))
    assert set(pred["label"]) <= {"negative", "positive"}
