"""Return the message it was given.

The smallest task: useful to check the pipeline end to end and to benchmark it.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from workers.task_context import TaskContext

NAME = "echo"


class Input(BaseModel):
    message: str = Field(max_length=100_000, description="Text to return as the result.")


async def run(ctx: TaskContext, input: Input) -> dict[str, str]:
    return {"message": input.message}
