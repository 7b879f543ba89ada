"""fence.executor: the executor service and its parts."""
