"""Prefect tasks, one module per pipeline step: read catalog entries, call potstill, write, log.

Project code, not an installed package: the `potstill` CLI and the tests import it from the project root.
Importing it changes nothing in the environment; `potstill.env.apply_defaults` is called by the entry points.
"""
