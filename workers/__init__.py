"""arq workers: the task catalog (one module per task type) and the code that runs it."""
