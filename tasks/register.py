"""Step 7: log the student to MLflow (weights, tokenizer, student prompt) and register it with aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from potstill.classifier import Classifier
from potstill.promotion import AliasDecision, decide_aliases
from tasks.tracking import log_json, resumed


class StudentModel(mlflow.pyfunc.PythonModel):
    """Serves a registered student: a DataFrame of prompt fields in, label + confidence + distribution out."""

    def load_context(self, context: Any) -> None:
        self.clf = Classifier.load(Path(context.artifacts["student"]))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        return predict_frame(self.clf, model_input)


def predict_frame(clf: Classifier, frame: pd.DataFrame) -> pd.DataFrame:
    scores = clf.predict(frame.to_dict(orient="records"))
    return pd.DataFrame(
        [
            {"label": s.label, "confidence": s.confidence, **{f"p_{k}": v for k, v in s.distribution.items()}}
            for s in scores
        ]
    )


def champion_metric(client: MlflowClient, model_name: str, metric: str) -> tuple[str | None, float | None]:
    """(version, metric) of the current champion, or (None, None) when there is none."""
    try:
        mv = client.get_model_version_by_alias(model_name, "champion")
    except mlflow.exceptions.MlflowException:
        return None, None
    value = client.get_run(mv.run_id).data.metrics.get(metric) if mv.run_id else None
    return mv.version, value


@task(name="register_student", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def register_student(
    folder: Path,
    sample: list[dict[str, Any]],
    model_name: str,
    metric: str,
    value: float,
    run_id: str,
    lineage: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Log and register; the version is tagged with its lineage (data and prompt versions, commit, config)."""
    client = MlflowClient()
    previous, champion_value = champion_metric(client, model_name, metric)
    decision: AliasDecision = decide_aliases(metric, value, champion_value)
    clf = Classifier.load(folder)
    fields = clf.prompt.fields
    example = pd.DataFrame([{f: r[f] for f in fields} for r in sample[:3]])
    signature = infer_signature(example, predict_frame(clf, example))
    with resumed(run_id):
        info = mlflow.pyfunc.log_model(
            name="student",
            python_model=StudentModel(),
            artifacts={"student": str(folder)},
            signature=signature,
            input_example=example,
            registered_model_name=model_name,
            pip_requirements=["potstill", "torch", "transformers", "pandas"],
        )
        mlflow.log_text(clf.prompt.text, f"prompts/{clf.prompt.name}.txt")
    version = str(info.registered_model_version)
    for alias in decision.aliases:
        if alias == "champion" and previous is not None:
            client.set_registered_model_alias(model_name, "previous", previous)
        client.set_registered_model_alias(model_name, alias, version)
    client.set_model_version_tag(model_name, version, "potstill.decision", ", ".join(decision.aliases))
    client.set_model_version_tag(model_name, version, "potstill.reasons", "; ".join(decision.reasons))
    client.set_model_version_tag(model_name, version, "potstill.prompt", clf.prompt.name)
    client.set_model_version_tag(model_name, version, metric, f"{value:.6f}")
    for key, tag in (lineage or {}).items():
        client.set_model_version_tag(model_name, version, f"lineage.{key}", tag)
    log_json(
        run_id,
        {"version": version, "aliases": decision.aliases, "reasons": decision.reasons},
        "registry/decision.json",
    )
    get_run_logger().info(
        "registered %s version %s as %s: %s",
        model_name,
        version,
        "+".join(decision.aliases),
        "; ".join(decision.reasons),
    )
    return {
        "model_name": model_name,
        "version": version,
        "aliases": decision.aliases,
        "reasons": decision.reasons,
    }
