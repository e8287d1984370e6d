"""Task types for tests only (TASKRUNNER_TASK_MODULES=tests.support.memtasks)."""
