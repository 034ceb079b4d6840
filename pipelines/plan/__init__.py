"""``dataengine plan``: each stage of a recipe at its real architecture and shapes, one function per stage."""

from pipelines.plan.caption import plan_caption
from pipelines.plan.encode import fact_shape, plan_encode
from pipelines.plan.filters import plan_filters
from pipelines.plan.text import plan_text

__all__ = ["fact_shape", "plan_caption", "plan_encode", "plan_filters", "plan_text"]
