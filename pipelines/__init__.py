"""Runners that place dataengine stages: in this process (``run_chain``) or on Ray actor pools."""

from pipelines.local import batched, run_chain

__all__ = ["batched", "run_chain"]
