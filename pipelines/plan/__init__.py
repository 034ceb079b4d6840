"""``dataengine plan``: each stage of a recipe at its real architecture and shapes, one function per stage."""

from pipelines.plan.caption import plan_caption

__all__ = ["plan_caption"]
