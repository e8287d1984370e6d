"""taskrunner: the shared core of the task service (config, tables, state machine, events)."""
