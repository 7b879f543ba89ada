"""fence: a policy-driven sandbox for semi-trusted commands.

The import package is assembled from ``libs/fence`` (the shared core) and the
service folders ``services/*`` (``fence.config``, ``fence.proxy``,
``fence.executor``, ``fence.monitor``).  Importing ``fence`` itself is free:
nothing heavy happens here because ``fence run`` is on the hot path.
"""

__version__ = "0.1.0"
