"""What the test modules share, one concept per module: the environment a test's processes
get (environment), in-process servers (servers), a client of a running api (stack), waits
on state (waiting), `taskrunner` subprocesses (processes), task operations over GraphQL
(tasks) and rows written directly (rows), subscriptions (subscriptions, fanout), artifacts
(artifacts), a DNS stub (dns), input bounds (bounds), lock files (locks); and the probes
that tests run inside a worker or a process of their own (body_probe, pg_proxy,
trace_probe, redaction_probe, memtasks).

Test modules import from here, never from one another nor from a conftest."""
