"""Typed run configuration: `params.yaml` parsed into documented pydantic models.

One YAML file is the whole run config (DVC reads the same file as its params). Every model forbids
unknown keys, so a typo fails at start with the key path instead of being ignored for an hour-long run.
`-o section.field=value` overrides are applied to the raw mapping before validation, so they are checked
by exactly the same rules as the file.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from potstill.config.base import ConfigError, Section
from potstill.config.data import CatalogConfig, DataConfig, ValidationConfig
from potstill.config.migrate import ConfigMovedWarning, migrate
from potstill.config.operations import MonitorConfig, RetrainConfig
from potstill.config.registry import PromotionConfig, RegistryConfig
from potstill.config.teacher import ReviewConfig, RouteConfig, TeacherConfig
from potstill.config.training import DistillConfig, StudentConfig

__all__ = [
    "CatalogConfig",
    "ConfigError",
    "ConfigMovedWarning",
    "DataConfig",
    "DistillConfig",
    "MonitorConfig",
    "PromotionConfig",
    "RegistryConfig",
    "RetrainConfig",
    "ReviewConfig",
    "RouteConfig",
    "RunConfig",
    "StudentConfig",
    "TeacherConfig",
    "ValidationConfig",
    "apply_overrides",
    "config_hash",
    "flatten",
    "load_config",
    "migrate",
    "parse_override",
    "to_yaml",
    "validate",
]


class RunConfig(Section):
    """The whole run: `params.yaml`."""

    task: str = Field(
        "polarity",
        min_length=1,
        description="The task this run works on: a declaration in catalog/tasks/<task>.yaml (`potstill task "
        "list`); --task NAME overrides it.",
    )
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)

    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    route: RouteConfig = Field(default_factory=RouteConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    @model_validator(mode="after")
    def _route_not_everything(self) -> RunConfig:
        if self.route.budget is not None and self.route.budget >= 1.0:
            raise ValueError("route.budget must be below 1.0: some rows have to stay for training")
        return self


def parse_override(text: str) -> tuple[list[str], Any]:
    """`student.max_steps=50` -> (["student", "max_steps"], 50); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE, e.g. student.max_steps=50")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return out


def _describe(err: dict[str, Any]) -> str:
    path = ".".join(str(p) for p in err["loc"]) or "<root>"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        return f"{path}: unknown key (value {value!r})"
    return f"{path}: {err['msg']} (got {value!r})"


def validate(raw: dict[str, Any]) -> RunConfig:
    """The run config from a mapping; keys of older files are moved first (`potstill.config.migrate`)."""
    raw, _ = migrate(raw)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigError("invalid run config:\n  " + "\n  ".join(lines)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read `params.yaml` (or defaults when path is None), apply `-o` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the run config must be a mapping, got {type(loaded).__name__}")
        raw = loaded
    return validate(apply_overrides(raw, overrides or []))


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def config_hash(config: RunConfig) -> str:
    """Identity of a resolved config, recorded with every run and registered model."""
    import hashlib

    return hashlib.sha256(to_yaml(config).encode()).hexdigest()[:16]


def flatten(config: RunConfig) -> dict[str, str]:
    """`{"student.learning_rate": "0.0001", ...}` for MLflow params."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = str(node)

    walk("", config.model_dump(mode="json"))
    return out
