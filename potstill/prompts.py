"""Prompt templates: `{field}` placeholders filled from a row, split into a shared prefix and a row part.

Labeling speed depends on reusing the key/value cache of everything before the first placeholder (the
instructions and few-shot examples). That only gives the same numbers as the unsplit prompt when the
prefix ends exactly where the row's tokens begin, so whitespace before the first placeholder belongs to
the row part: `Review: {text}` splits into `Review:` and ` <text>`, which tokenizes as the whole does.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from typing import Any


class PromptError(ValueError):
    """A template that cannot be rendered for a row."""


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    text: str

    @property
    def fields(self) -> list[str]:
        return [f for _, f, _, _ in string.Formatter().parse(self.text) if f]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def split(self) -> tuple[str, str]:
        """(shared prefix, row template) with leading whitespace of the row part kept in the row part."""
        fields = self.fields
        if not fields:
            raise PromptError(f"prompt {self.name!r} has no {{field}} placeholder for the row")
        head, _, _ = self.text.partition("{" + fields[0])
        prefix = head.rstrip(" \t")
        # The prefix is used as it is (never formatted), so literal braces written `{{`/`}}` are unescaped.
        return prefix.replace("{{", "{").replace("}}", "}"), self.text[len(prefix) :]

    def render(self, row: dict[str, Any]) -> str:
        return self.prefix + self.render_row(row)

    @property
    def prefix(self) -> str:
        return self.split()[0]

    def render_row(self, row: dict[str, Any]) -> str:
        _, body = self.split()
        missing = [f for f in self.fields if f not in row]
        if missing:
            raise PromptError(f"prompt {self.name!r} needs field(s) {missing}; row has {sorted(row)}")
        return body.format_map({f: _clean(row[f]) for f in self.fields})


def _clean(value: Any) -> str:
    return " ".join(str(value).split())


def label_completion(label: str) -> str:
    """The text the model emits for a label right after the prompt: one space, then the label word."""
    return " " + label
