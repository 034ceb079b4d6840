"""The base of every component config: strict (unknown keys are errors) and immutable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StageConfig(BaseModel):
    """Base of every component config. A misspelled key is a validation error, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A configuration mistake the user can fix (unknown recipe, key or model name); the message says how."""
