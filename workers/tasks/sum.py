"""Add up a list of numbers."""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from workers.context import TaskContext

NAME = "sum"


class Input(BaseModel):
    numbers: list[float] = Field(
        min_length=1, max_length=100_000, description="The numbers to add (at least one)."
    )


async def run(ctx: TaskContext, input: Input) -> dict[str, float]:
    return {"sum": math.fsum(input.numbers)}
