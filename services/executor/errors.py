"""``FenceError``: a run that must not start (or cannot go on), said as ``Error: ...``, exit 1.

Apart from the runner so the deciding modules (``prepare``) raise it without importing the doing ones.
"""


class FenceError(Exception):
    """A fence-level failure: printed as ``Error: ...``, exit 1."""
