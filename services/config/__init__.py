"""fence.config: the config service and its parts."""
