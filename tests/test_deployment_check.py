"""Which parameters a run of a served deployment may change (potstill/operations/deployment.py): a pure
decision, checked against hand-made configs. The served path is tested in test_retrain_and_deploy.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from flows.pipeline import resolve
from potstill.config import validate
from potstill.errors import UserError
from potstill.operations.deployment import OVERRIDABLE, changed_settings, check_deployment_run

SERVED = validate({}).model_dump(mode="json")


def test_the_served_config_runs_and_a_size_may_change() -> None:
    assert check_deployment_run("/srv/p", SERVED, "/srv/p", copy.deepcopy(SERVED)).allowed
    sized = copy.deepcopy(SERVED)
    sized["data"]["max_prompts"], sized["review"]["wait"] = 8, "timeout"
    assert changed_settings(SERVED, sized) == ["data.max_prompts", "review.wait"]
    assert check_deployment_run("/srv/p", SERVED, "/srv/p", sized).allowed


def test_hosts_models_and_projects_may_not_change() -> None:
    for key, value in (("base_url", "http://collector.example/v1"), ("model", "evil/model")):
        given = copy.deepcopy(SERVED)
        if key == "base_url":
            given["teacher"]["openai"]["base_url"] = value
        else:
            given["teacher"]["model"] = value
        check = check_deployment_run("/srv/p", SERVED, "/srv/p", given)
        assert not check.allowed and "teacher." in check.reasons[0]
    moved = check_deployment_run("/srv/p", SERVED, "/tmp/other", SERVED)
    assert not moved.allowed and moved.reasons == ["project '/tmp/other' is not the served project '/srv/p'"]
    added = copy.deepcopy(SERVED) | {"extra": 1}  # a key on one side only is a change too
    assert "extra" in check_deployment_run("/srv/p", SERVED, "/srv/p", added).reasons[0]
    assert not any(k.startswith(("teacher.", "catalog.", "registry.")) for k in OVERRIDABLE)


def test_a_served_run_with_another_host_or_project_is_refused_before_it_reads_anything(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flows.pipeline.resolve, as a flow run of a served deployment calls it: the deployment's name from
    Prefect's runtime (set through Prefect's documented `PREFECT__RUNTIME__DEPLOYMENT__NAME` mock), what was
    served from the file `potstill deploy` names in POTSTILL_SERVED_CONFIG (its flow-run processes inherit
    its environment: prefect.runner merges os.environ into theirs)."""
    served = {"polarity-distill-nightly": {"project": str(project), "params": SERVED}}
    (tmp_path / "served.json").write_text(json.dumps(served))
    monkeypatch.setenv("POTSTILL_SERVED_CONFIG", str(tmp_path / "served.json"))
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__NAME", "polarity-distill-nightly")
    assert resolve(copy.deepcopy(SERVED), str(project)).root == project.resolve()
    evil = copy.deepcopy(SERVED)
    evil["teacher"]["openai"]["base_url"] = "http://collector.example/v1"
    with pytest.raises(UserError, match=r"refuses this run: it changes teacher\.openai\.base_url"):
        resolve(evil, str(project))
    with pytest.raises(UserError, match="is not the served project"):
        resolve(copy.deepcopy(SERVED), str(project.parent))
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__NAME", "someone-elses")
    with pytest.raises(UserError, match="not one that this `potstill deploy` serves"):
        resolve(copy.deepcopy(SERVED), str(project))
    monkeypatch.delenv("POTSTILL_SERVED_CONFIG")  # not served by potstill deploy: nothing to check against
    assert resolve(evil, str(project)).cfg.teacher.openai.base_url == "http://collector.example/v1"
