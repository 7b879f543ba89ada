"""A detached sandbox's output: sequence-numbered chunks in a bounded ring (pure, no I/O).

Why a ring the readers pull from, rather than chunks pushed at them: the
executor must read a sandbox's pipes whatever its readers do (a command
blocked on a full pipe would be a sandbox stalled by its consumer), and it
must never hold more than a fixed amount per sandbox.  So every chunk read
is appended here and the oldest are forgotten past ``limit`` bytes; each
reader asks for what follows the last ``seq`` it got, at its own pace.  A
reader that fell behind the ring (too slow, or attached late) gets a
``dropped`` marker counting exactly the chunks it missed: output is lost
only by being counted.
"""

from __future__ import annotations

from collections import deque

from fence.messages import OutputChunk

DEFAULT_TAIL = 256 * 1024
"""Bytes of output a sandbox retains unless its start asks otherwise."""
MAX_TAIL = 16 * 1024 * 1024
"""The most a start may ask to retain."""


class OutputLog:
    """Chunks numbered 1, 2, ... across stdout and stderr; the newest ``limit`` bytes are kept."""

    def __init__(self, limit: int = DEFAULT_TAIL):
        self.limit = limit
        self.chunks: deque[OutputChunk] = deque()
        self.retained = 0
        """Bytes held now."""
        self.last = 0
        """The seq of the newest chunk (0: none yet)."""
        self.total_bytes = 0

    def append(self, stream: str, data: bytes) -> OutputChunk:
        """Number and keep one chunk; forget the oldest ones beyond ``limit`` (the newest always stays)."""
        self.last += 1
        chunk = OutputChunk(seq=self.last, stream=stream, data=data)
        self.chunks.append(chunk)
        self.retained += len(data)
        self.total_bytes += len(data)
        while self.retained > self.limit and len(self.chunks) > 1:
            self.retained -= len(self.chunks.popleft().data)
        return chunk

    @property
    def first(self) -> int:
        """The seq of the oldest chunk still held (``last + 1`` when none is)."""
        return self.chunks[0].seq if self.chunks else self.last + 1

    def after(self, seq: int, max_bytes: int) -> list[OutputChunk]:
        """The chunks after ``seq``, at most about ``max_bytes`` of data (at least one chunk when any is
        due); a ``dropped`` marker first when chunks between ``seq`` and the oldest held are gone."""
        seq = max(0, min(seq, self.last))
        out: list[OutputChunk] = []
        first = self.first
        if seq + 1 < first:
            out.append(OutputChunk(seq=first - 1, stream="dropped", count=first - 1 - seq))
            seq = first - 1
        size = 0
        for chunk in self._from(seq + 1):
            if out and out[-1].stream != "dropped" and size + len(chunk.data) > max_bytes:
                break
            out.append(chunk)
            size += len(chunk.data)
        return out

    def _from(self, seq: int):
        """Held chunks from ``seq`` on (seqs are consecutive: index by offset)."""
        if not self.chunks or seq > self.last:
            return ()
        start = seq - self.chunks[0].seq
        return (self.chunks[i] for i in range(max(0, start), len(self.chunks)))
