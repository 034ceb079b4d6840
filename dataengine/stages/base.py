"""The stage lifecycle every stage follows, and the typed contract a pipeline checks when it is built.

A stage is built from its own small config (cheap: the constructor only stores it), loads whatever it needs
once per worker in ``setup()``, turns a batch of input records into output records in ``process_batch()``,
and releases resources in ``teardown()``. Per-item problems come back as ``Failure`` records in the output
list; exceptions are reserved for bugs, bad configs and missing dependencies.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

from dataengine.config import Config
from dataengine.records import Failure

In = TypeVar("In")
Out = TypeVar("Out")

__all__ = ["Config", "Stage", "check_chain"]


class Stage(ABC, Generic[In, Out]):
    """One step of the pipeline. Subclasses set ``name``, ``input_type`` and ``output_type``."""

    name: ClassVar[str]
    input_type: ClassVar[type]
    output_type: ClassVar[type]

    def __init__(self, config: Any) -> None:
        self.config = config

    def setup(self) -> None:
        """Load models or open resources; called once per worker before the first batch."""

    @abstractmethod
    def process_batch(self, batch: Sequence[In]) -> list[Out | Failure]:
        """Process ``batch``; return outputs and per-item ``Failure`` records in input order."""

    def teardown(self) -> None:
        """Release what ``setup()`` acquired."""

    def __enter__(self) -> Stage[In, Out]:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()


def check_chain(stages: Sequence[Stage[Any, Any]]) -> None:
    """Raise ``TypeError`` when a stage's output type is not the next stage's input type."""
    for upstream, downstream in itertools.pairwise(stages):
        if not issubclass(upstream.output_type, downstream.input_type):
            raise TypeError(
                f"stage {upstream.name!r} emits {upstream.output_type.__name__} but "
                f"{downstream.name!r} expects {downstream.input_type.__name__}"
            )
