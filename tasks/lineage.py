"""`potstill lineage <model>@<alias>`: which data, prompts, code and config made a registered model."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from tasks.tracking import configure


def lineage_lines(root: Path, ref: str) -> list[str]:
    name, _, alias = ref.partition("@")
    client = configure(root)
    mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, "1")
    tags = mv.tags
    run = MlflowClient().get_run(mv.run_id) if mv.run_id else None
    lines = [f"{name} version {mv.version}" + (f" (@{alias})" if alias else "")]
    lines.append(f"  task       : {tags.get('lineage.task', '-')}")
    lines.append(f"  decision   : {tags.get('potstill.decision', '-')} - {tags.get('potstill.reasons', '')}")
    lines.append(f"  MLflow run : {tags.get('lineage.mlflow_run', mv.run_id)}")
    lines.append(f"  git commit : {tags.get('lineage.git_commit', '-')}")
    lines.append(
        f"  config hash: {tags.get('lineage.config_hash', '-')} (run artifact config/params.resolved.yaml)"
    )
    data = sorted(
        (k.removeprefix("lineage.data."), v) for k, v in tags.items() if k.startswith("lineage.data.")
    )
    prompts = sorted(
        (k.removeprefix("lineage.prompt."), v) for k, v in tags.items() if k.startswith("lineage.prompt.")
    )
    lines.append("  datasets:")
    lines += [f"    {n:<18} {v}" for n, v in data] or ["    (none recorded)"]
    lines.append("  prompts:")
    lines += [f"    {n:<18} {v}" for n, v in prompts] or ["    (none recorded)"]
    if run is not None:
        for d in run.inputs.dataset_inputs:
            src = d.dataset.source
            lines.append(f"  input {d.dataset.name}: digest {d.dataset.digest}, source {src[:120]}")
    task = tags.get("lineage.task")
    scope = f"--task {task} " if task else ""
    lines.append("get them back:")
    for n, v in data:
        if v.startswith("v"):
            lines.append(f"    potstill catalog checkout {scope}{n}@{v.split()[0]}")
    for n, v in prompts:
        lines.append(f"    potstill catalog show {scope}prompt.{n}@{v.split()[0]}")
    return lines
