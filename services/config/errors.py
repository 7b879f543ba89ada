"""``ConfigError``: a config that cannot be used, with a message that says why and what to do.

Kept apart from the loaders so every module of ``fence.config`` can raise it
without import cycles; ``fence.config.resolve`` re-exports it.
"""

from __future__ import annotations

from fence.bus import ServiceError
from fence.textsafe import printable


class ConfigError(ServiceError):
    """A config that cannot be used; the message names the file, the JSON path and the problem.

    The CLI prints it as ``Error: failed to load config: <message>`` (exit 1).
    """

    code = "invalid_config"


class SettingsFileMissing(ConfigError):
    """``--settings FILE`` names no file: refused, never the built-in defaults in its place.

    Running with the defaults would silently drop every rule the user wrote.
    Printed as ``Error: settings file FILE does not exist`` (no "failed to load
    config" prefix: nothing was loaded), exit 1.
    """

    code = "settings_missing"


Problem = tuple[str, str]
"""(JSON path such as ``$.network.allowedDomains[2]``, message)."""


def invalid(label: str, problems: list[Problem]) -> ConfigError:
    """One error for every problem found in one source (a file or a template).

    Several problems are one indented line each; what goes into a line (the
    file's path, a JSON path built from the file's keys, a message quoting a
    value) is escaped, so the line breaks are only these (``fence.textsafe.printable_message``).
    """
    if len(problems) == 1:
        path, message = problems[0]
        return ConfigError(f"invalid configuration in {label}: {path}: {message}")
    lines = "".join(f"\n  {printable(path)}: {printable(message)}" for path, message in problems)
    return ConfigError(f"invalid configuration in {printable(label)} ({len(problems)} problems):{lines}")
