"""Run a chain of stages in this process, streaming: the simplest runner, used by the CLI's single-machine
commands and by tests. The Ray runner places the same stages on actor pools.

    for result in run_chain([ProbeStage(), SplitStage(), DecodeStage()], sources):
        ...  # DecodedClip or Failure, as soon as each is ready
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from typing import Any, TypeVar

from dataengine.records import Failure
from dataengine.stages.base import Stage, check_chain

T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` items (``itertools.batched`` arrives in Python 3.12)."""
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def run_chain(stages: Sequence[Stage[Any, Any]], items: Iterable[Any], batch_size: int = 4) -> Iterator[Any]:
    """Push ``items`` through ``stages`` batch by batch; yield final outputs and every ``Failure``.

    Stages are set up before the first item and torn down when the iterator is exhausted or closed.
    Failures skip the remaining stages. Raises ``TypeError`` when adjacent stages do not fit together.
    """
    check_chain(stages)
    with ExitStack() as stack:
        for stage in stages:
            stack.enter_context(stage)
        stream: Iterable[Any] = items
        for stage in stages:
            stream = _apply(stage, stream, batch_size)
        yield from stream


def _apply(stage: Stage[Any, Any], items: Iterable[Any], batch_size: int) -> Iterator[Any]:
    for batch in batched(items, batch_size):
        todo = [item for item in batch if not isinstance(item, Failure)]
        yield from (item for item in batch if isinstance(item, Failure))
        if todo:
            yield from stage.process_batch(todo)
