"""Prefect flows: only wiring of tasks."""

from potstill.env import apply_defaults

apply_defaults()
