"""Write a CSV report of `rows` rows as an artifact, streamed row by row.

For seeing artifacts at work: the task's `artifacts` (and its ArtifactAdded event) give a
download link.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

from pydantic import BaseModel, Field

from workers.task_context import TaskContext

NAME = "report"
ROWS_PER_CHUNK = 1000
# 2,000,000 rows make a 64 MB CSV, within the default TASK_MAX_ARTIFACT_MB (100), written in
# seconds: a report can neither run for long nor fill a disk.
MAX_ROWS = 2_000_000


class Input(BaseModel):
    rows: int = Field(default=100, ge=1, le=MAX_ROWS, description="Data rows in the CSV.")


async def _csv(rows: int) -> AsyncIterator[bytes]:
    yield b"n,square,sqrt\n"
    for start in range(1, rows + 1, ROWS_PER_CHUNK):
        end = min(rows, start + ROWS_PER_CHUNK - 1)
        yield "".join(f"{n},{n * n},{math.sqrt(n):.6f}\n" for n in range(start, end + 1)).encode()
        await asyncio.sleep(0)  # let cancellation and other tasks in


async def run(ctx: TaskContext, input: Input) -> dict[str, object]:
    artifact = await ctx.artifact("report.csv", _csv(input.rows), "text/csv")
    await ctx.progress(1.0, f"{input.rows} rows written")
    return {"rows": input.rows, "artifact": str(artifact.id), "bytes": artifact.size}
