"""fence.proxy: the proxy service and its parts."""
