"""Configuration, one way for every kind: strict typed configs, recipes in registries, ``--set`` overrides.

    recipe = RECIPES.get("demo")                       # a complete, validated config
    recipe = apply_overrides(recipe, ["caption.sampling.max_tokens=512", "split.mode=fixed"])

Every component owns a small ``Config`` subclass and is built from it; a run, a training job or a model's
lineage is a *recipe*: a function returning a complete config, registered by name in a ``Registry``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class Config(BaseModel):
    """Base of every config. A misspelled key is a validation error, never silently ignored; configs are
    immutable (``model_copy(update=...)`` or ``apply_overrides`` make changed copies)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A configuration mistake the user can fix (unknown recipe, key or model name); the message says how."""


class OverrideError(ConfigError):
    """An override names a key that does not exist, or gives a value the key does not accept."""


T = TypeVar("T")
C = TypeVar("C", bound=BaseModel)


class Registry(Generic[T]):
    """Named recipes of one kind: ``name -> function returning a complete config`` (or any built thing).

    Args:
        kind: what the entries are, for messages ("recipe", "training recipe", "lineage").
        entries: the recipes, in the order ``--help`` and listings show them.
    """

    def __init__(self, kind: str, entries: Mapping[str, Callable[[], T]]) -> None:
        self.kind = kind
        self._entries = dict(entries)

    def get(self, name: str) -> T:
        """A fresh instance of the recipe called ``name``.

        Raises:
            ConfigError: no such name; the message lists the names that exist.
        """
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries))}")
        return self._entries[name]()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        """The names, in the order given."""
        return iter(self._entries)


def apply_overrides(config: C, overrides: Sequence[str]) -> C:
    """``config`` with ``key.path=value`` overrides applied (values parse as JSON, else as strings).

    Raises:
        OverrideError: malformed override, unknown key (the message lists the keys that exist there), or a
            value that fails validation.
    """
    data = config.model_dump(mode="json")
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise OverrideError(
                f"override {override!r} is not key=value (e.g. caption.sampling.max_tokens=512)"
            )
        _set(data, key.strip().split("."), _parse(raw))
    try:
        return type(config).model_validate(data)
    except ValidationError as exc:
        raise OverrideError(f"invalid override: {exc}") from exc


def _parse(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _set(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for depth, part in enumerate(path):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(path[:depth]) or "the recipe"
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "none (not a section)"
            raise OverrideError(f"unknown key {'.'.join(path)!r}: {where} has {known}")
        if depth == len(path) - 1:
            node[part] = value
        else:
            node = node[part]
