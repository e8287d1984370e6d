"""The GraphQL types of the contract (DESIGN.md), one module per resource.

Their names are binding for clients. Import each type from its module: status (TaskStatus,
TaskError), artifacts, events (TaskEvent and its kinds), tasks (Task, its pages, filter and
options, Processed), service (TaskType, Worker, Limits). Each imports only those before it.
"""
