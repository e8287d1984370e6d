"""Artifacts: files a task or a client attaches to a task, bytes in a store (the local
disk or S3) and records in PostgreSQL, within storage quotas, downloaded through expiring
links.

Import from the module of the concept: `streams` (metered byte streams), `storage` (the
store protocol and `make_store`), `local` and `s3` (the backends), `signing` (signed links
and the download header), `quotas`, `records` (add, list, get, retention) and `uploads`
(client upload grants). A task's log is not a file: `taskrunner.tasklogs` reads it from
its events.
"""
