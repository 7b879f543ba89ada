"""Sizes in a policy (``filesystem.tmpSize``, ``filesystem.shmSize``): "512M", "25%", or bytes.

One grammar for the two sides that must agree on it: the config service
validates a value with ``size_problem`` (its message names what is wrong),
the executor turns a valid one into bytes for bwrap's ``--size`` with
``to_bytes``.  A percentage is of the machine's physical memory, as with
tmpfs's own ``size=25%`` (bwrap only takes bytes, so fence does the sum).
Plain string work: it runs on every ``fence run``.
"""

from __future__ import annotations

import os

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
"""Binary multiples, as tmpfs reads them: "512M" is 512 MiB."""

DEFAULT_TMP = "25%"
"""The sandbox's /tmp and /dev/shm when the policy sets no size: a quarter of RAM each, not the kernel's
half (several tmpfs mounts at half each could pin more memory than the machine has)."""

FORMS = 'a number of bytes, "<number>K|M|G|T" (e.g. "512M") or "<percent>%" of RAM (e.g. "25%")'


def size_problem(value: str | int) -> str | None:
    """What is wrong with ``value`` as a size, or None (unset "" / 0 is fine: the default applies)."""
    if isinstance(value, bool):
        return f"expected {FORMS}, got {value!r}"
    if isinstance(value, int):
        return None if value >= 0 else f"a size cannot be negative (got {value})"
    if value == "":
        return None
    text = value.strip()
    if text.endswith("%"):
        number = text[:-1]
        try:
            percent = float(number) if _decimal(number) else -1.0
        except ValueError:
            percent = -1.0
        if not 0 < percent <= 100:
            return f'"{value}" is not a percentage of RAM between 0 and 100 (e.g. "25%")'
        return None
    digits, unit = (text[:-1], text[-1].upper()) if text[-1:].isalpha() else (text, "")
    if unit not in UNITS or not digits.isdigit() or not digits.isascii():
        return f'"{value}" is not a size: expected {FORMS}'
    if int(digits) == 0:
        return f'"{value}" is zero: a tmpfs needs room (leave the field out for the default)'
    return None


def _decimal(text: str) -> bool:
    whole, _, fraction = text.partition(".")
    return bool(whole or fraction) and (whole or "0").isdigit() and (fraction or "0").isdigit() and text.isascii()


def to_bytes(value: str | int, memory: int | None = None) -> int:
    """``value`` (valid, see ``size_problem``) in bytes; "" or 0 means ``DEFAULT_TMP``.

    ``memory``: physical memory in bytes (default: this machine's, from sysconf: no file read).
    Raises ValueError for an invalid value (the config service has refused it before a run gets here).
    """
    if value in ("", 0):
        value = DEFAULT_TMP
    problem = size_problem(value)
    if problem:
        raise ValueError(problem)
    if isinstance(value, int):
        return value
    text = value.strip()
    if text.endswith("%"):
        if memory is None:
            memory = physical_memory()
        return max(1, int(memory * float(text[:-1]) / 100))
    if text[-1:].isalpha():
        return int(text[:-1]) * UNITS[text[-1].upper()]
    return int(text)


def physical_memory() -> int:
    """The machine's RAM in bytes (what tmpfs's percentages are of)."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
