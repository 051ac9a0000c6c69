"""Prefect flows: only wiring of tasks.

Project code, not an installed package (see tasks/__init__.py).
"""
