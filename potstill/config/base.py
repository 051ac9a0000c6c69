"""What every config section shares: unknown keys fail, assignments are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from potstill.errors import UserError


class ConfigError(UserError, ValueError):
    """A run config that cannot be used; the message names key path, bad value and what is allowed."""


class Section(BaseModel):
    """Base of every section: a misspelt key fails at start instead of being ignored for a long run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
