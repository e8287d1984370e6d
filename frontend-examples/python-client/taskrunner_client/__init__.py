"""A typed client of the taskrunner GraphQL API, generated from schema.graphql (api.py)
with a small hand-written layer: the transport (transport.py) and following a task or a
workflow to its end (client.py)."""

from .api import *  # noqa: F403  (every operation's models, inputs and enums)
from .api import Operations
from .client import FINISHED, TASK_TYPES, WORKFLOW_FINISHED, TaskrunnerClient, task_spec
from .transport import UNSET, TaskrunnerError, Transport

# the hand-written names; api.py's come with the star import
__all__ = [
    "FINISHED",
    "TASK_TYPES",
    "UNSET",
    "WORKFLOW_FINISHED",
    "Operations",
    "TaskrunnerClient",
    "TaskrunnerError",
    "Transport",
    "task_spec",
]
