"""Placeholders for missing protected paths, shared by every concurrent run of one user.

A protected path that does not exist cannot be bound read-only, and a name
watched only until the run ends leaves a window as long as the run: an agent
session of hours can plant ``~/.config/git/config`` and the user's next
``git status`` in another terminal runs it.  So a missing name from
``fence.protectednames`` is *reserved* where its placeholder is inert
(``protect.py`` decides where): fence creates the placeholder (an empty
file, ``{}``, an empty directory), binds it read-only, and removes it
afterwards.

Removal is the delicate part.  Unlinking a file that is a mount point in
*another* sandbox's mount namespace is allowed and silently detaches that
sandbox's read-only bind, which would free the name for it.  So every run
holds a shared lock (``reserve.lock`` in fence's runtime directory, which
no sandbox sees) from reservation to its end, and only a run that can then
take the lock exclusively (no other run is active) removes placeholders: all
of them, its own and those left by earlier runs, listed in
``placeholders.json``.  A placeholder is removed only while it is still the
very entry fence made (device and inode) and, for a file, still holds exactly
the placeholder content: anything else is the user's (``git config --global``
may write to it during the run) and stays.  A run killed before its end
leaves its placeholders, inert, for the next run out to remove.
"""

from __future__ import annotations

import errno
import fcntl
import os

import msgspec

from fence.protectednames import DIR
from fence.runtime import ensure_private_dir, read_cache, runtime_dir, write_private

RUNS_LOCK = "reserve.lock"
REGISTRY = "placeholders.json"
REGISTRY_LOCK = "placeholders.lock"


class PathSwapped(Exception):
    """A protected path (or a parent) became a symlink between the scan and the reservation: the run stops."""


class Made(msgspec.Struct, frozen=True):
    """One entry fence created for a placeholder (the placeholder itself or a parent directory)."""

    path: str
    dev: int
    ino: int
    content: str | None = None
    """A file's placeholder content (latin-1); None for a directory."""


class Placeholder:
    """A protected path to reserve: where, under which writable root, with what inert content."""

    __slots__ = ("path", "root", "content")

    def __init__(self, path: str, root: str, content: bytes):
        self.path, self.root, self.content = path, root, content

    def create(self) -> tuple[list[Made], str]:
        """Make what is missing, step by step from the root (``*at`` calls on ``O_NOFOLLOW`` fds, so a
        symlink swapped in by a concurrent process fails the step instead of redirecting it).

        Returns the entries made and "" (done, or it exists already), or why not; raises
        ``PathSwapped`` when a symlink is in the way (someone is racing the run: it must not start).
        """
        made: list[Made] = []
        if os.path.islink(self.path):
            raise PathSwapped(f"protected path {self.path} became a symlink while the run started")
        if os.path.lexists(self.path):
            return made, ""
        parts = os.path.relpath(self.path, self.root).split("/")
        try:
            fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            return made, e.strerror or str(e)
        where = self.root
        try:
            for i, name in enumerate(parts):
                where = os.path.join(where, name)
                if i == len(parts) - 1 and self.content != DIR:
                    return made, self._file(fd, name, where, made)
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                    fresh = True
                except FileExistsError:
                    fresh = False
                if os.path.islink(where):
                    raise PathSwapped(
                        f"{where}, a parent of protected path {self.path}, became a symlink while the run started"
                    )
                child = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = child
                if fresh:
                    st = os.fstat(fd)
                    made.append(Made(where, st.st_dev, st.st_ino))
            return made, ""
        except OSError as e:
            return made, f"{where}: {e.strerror or e}"
        finally:
            os.close(fd)

    def _file(self, dir_fd: int, name: str, where: str, made: list[Made]) -> str:
        try:
            fd = os.open(
                name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
            )
        except FileExistsError:  # made meanwhile by someone else: bound as the existing file it is
            if os.path.islink(where):
                raise PathSwapped(f"protected path {self.path} became a symlink while the run started") from None
            return ""
        try:
            os.write(fd, self.content)
            st = os.fstat(fd)
            made.append(Made(where, st.st_dev, st.st_ino, self.content.decode("latin-1")))
        finally:
            os.close(fd)
        return ""


class Reservation:
    """One run's hold on the placeholders: taken before the first is made, given up after the run."""

    def __init__(self, directory: str | None = None):
        self.dir = ensure_private_dir(directory or runtime_dir())
        self.lock = os.open(
            os.path.join(self.dir, RUNS_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        fcntl.flock(self.lock, fcntl.LOCK_SH)  # waits only while a finishing run removes placeholders

    def make(self, placeholders: list[Placeholder]) -> dict[str, str]:
        """Create the missing ones and record, in one registry update, what was made; {path: why not}."""
        failed: dict[str, str] = {}
        made: list[Made] = []
        try:
            for placeholder in placeholders:
                entries, error = placeholder.create()
                made += entries
                if error:
                    failed[placeholder.path] = error
        finally:  # a PathSwapped part-way still leaves what was made listed for removal
            if made:
                self._update(lambda entries: entries + made)
        return failed

    def close(self) -> None:
        """Give up this run's hold; the last run out removes every placeholder still as it was made."""
        if self.lock < 0:
            return
        try:
            fcntl.flock(self.lock, fcntl.LOCK_UN)
            try:
                fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another run still holds its binds on them
            self._update(lambda entries: [m for m in reversed(entries) if not _remove(m)][::-1])
        finally:
            os.close(self.lock)
            self.lock = -1

    def _update(self, change) -> None:
        path = os.path.join(self.dir, REGISTRY)
        lock = os.open(
            os.path.join(self.dir, REGISTRY_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = read_cache(path, list[Made]) or []
            kept = change(entries)
            if kept:
                write_private(path, msgspec.json.encode(kept))
            elif entries:
                os.unlink(path)
        finally:
            os.close(lock)


def live_entries(directory: str | None = None) -> set[tuple[int, int]]:
    """(device, inode) of every placeholder fence made and has not removed yet: some run may still bind it."""
    entries = read_cache(os.path.join(directory or runtime_dir(), REGISTRY), list[Made]) or []
    return {(m.dev, m.ino) for m in entries}


def _remove(made: Made) -> bool:
    """Remove one entry if it is still what fence made; True when it is gone (removed or not there)."""
    try:
        st = os.lstat(made.path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if (st.st_dev, st.st_ino) != (made.dev, made.ino):
        return True  # replaced since: not ours any more, forget it
    try:
        if made.content is None:
            os.rmdir(made.path)  # only while empty
            return True
        content = made.content.encode("latin-1")
        if st.st_size == len(content):
            with open(made.path, "rb") as f:
                if f.read(len(content) + 1) == content:
                    os.unlink(made.path)
                    return True
        return True  # written to by the user during the run: theirs now, forget it
    except OSError as e:
        # a directory the user put something in during the run is theirs now; other errors: next run out
        return e.errno == errno.ENOTEMPTY
