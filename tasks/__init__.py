"""Prefect tasks, one module per pipeline step: read catalog entries, call potstill, write, log."""

from potstill.env import apply_defaults

apply_defaults()
