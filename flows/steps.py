"""One step of the pipeline per run, reading and writing catalog entries: what each `dvc.yaml` stage calls.

`potstill step <name> --task <task>` runs this flow for one step, so `dvc repro` executes the same step
functions as the distill flow (flows/pipeline.py), stage by stage, with every hand-off through a catalog
entry. Each step is its own MLflow run tagged `potstill.step`; every step first reads and validates the
task's data (`prepare`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, runtime

from flows.pipeline import RUNNERS, new_data, open_run, resolve
from potstill.pipeline import step as declared_step


@flow(name="distill-step")
def distill_step(
    step: str, params: dict[str, Any] | None = None, project: str | None = None
) -> dict[str, Any]:
    """Run one pipeline step; the previous steps' outputs must be in the catalog."""
    declared_step(step)  # an unknown name fails here, naming the steps
    setup = resolve(params, project)
    run_name = f"{setup.spec.name}-{step}-{runtime.flow_run.name}"
    with open_run(setup, "distill-step", run_name, standalone=True, tags={"potstill.step": step}) as ctx:
        data = new_data()
        RUNNERS["prepare"](ctx, data)
        if step != "prepare":
            RUNNERS[step](ctx, data)
        out: dict[str, Any] = {"step": step, "task": ctx.spec.name, "run_id": ctx.run_id}
        if "prompts" in data and step == "prepare":
            out.update(prompts=len(data["prompts"].rows), gold=len(data["gold"].rows))
        if step == "label":
            out.update(labeled=len(data["teacher_labels"].rows))
        if step == "route":
            routed = data["routed"]
            out.update(train_rows=len(routed["train_rows"]), review_rows=routed["review_rows"],
                       review=data["review"]["message"])  # fmt: skip
        if step == "train":
            out.update(steps=data["trained"]["steps"], tokens_per_s=data["trained"]["tokens_per_s"])
        if step == "evaluate":
            out.update(metrics=data["metrics"])
        if step == "register":
            out.update(registered=data["registered"])
        return out
