"""fence.monitor: the monitor service and its parts."""
