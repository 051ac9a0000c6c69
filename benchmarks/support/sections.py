"""BENCHMARKS.md is one file of sections, each owned by one script: a rerun replaces its own section and
leaves the others as they are."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """platform, CPU model (from /proc/cpuinfo) and core count: the numbers only mean something with it."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.platform()}, {cpu}, {os.cpu_count()} cores"


def write_section(text: str, path: Path, heading: str) -> None:
    """Replace the section under `heading` in `path` (up to the next `## `), or append it."""
    old = path.read_text() if path.exists() else ""
    start = old.find(heading)
    if start < 0:
        new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + text
    else:
        end = old.find("\n## ", start + len(heading))
        new = old[:start] + text + (old[end + 1 :] if end >= 0 else "")
    path.write_text(new.rstrip("\n") + "\n")
