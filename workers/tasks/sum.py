"""Add up a list of numbers."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from workers.task_context import TaskContext

NAME = "sum"
MAX_NUMBERS = 100_000
# Finite, and small enough that MAX_NUMBERS of them add up without overflowing a float.
MAX_MAGNITUDE = 1e300


def _within_magnitude(value: float) -> float:
    if abs(value) > MAX_MAGNITUDE:
        raise ValueError(f"must be between -{MAX_MAGNITUDE:g} and {MAX_MAGNITUDE:g}")
    return value


# Checked by a validator (pydantic's own `le` message would spell out 301 digits), published
# as minimum and maximum all the same.
Number = Annotated[
    float,
    Field(
        allow_inf_nan=False,
        json_schema_extra={"minimum": -MAX_MAGNITUDE, "maximum": MAX_MAGNITUDE},
    ),
    AfterValidator(_within_magnitude),
]


class Input(BaseModel):
    numbers: list[Number] = Field(
        min_length=1, max_length=MAX_NUMBERS, description="The numbers to add (at least one)."
    )


async def run(ctx: TaskContext, input: Input) -> dict[str, float]:
    return {"sum": math.fsum(input.numbers)}
