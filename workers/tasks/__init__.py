"""One module per task type: NAME, a pydantic `Input`, and `async def run(ctx, input)`."""
