"""Load one config file (or template) into a validated ``Policy``.

Every way a file can be unusable ends in a ``ConfigError`` whose message
names the file and says what to do -- never a traceback:

* not there: ``None`` (the caller uses the built-in defaults), as are files
  holding only whitespace or only comments;
* a directory, a FIFO/device/socket (reading one could block a shared
  service forever), unreadable, or larger than ``MAX_CONFIG_BYTES`` (the read
  stops there and the message says so);
* binary (NUL bytes) or not UTF-8: reported with line and column;
* bad JSONC syntax: ``invalid JSON in config file F: line L, column C: ...``;
* wrong types or unknown keys: ``invalid configuration in F: $.path: ...``,
  unknown keys with a "did you mean" (Fence ignores them: docs/compatibility.md#deliberate-deviations);
  nesting too deep for the decoder is reported, not raised;
* semantic rules (``fence.config.validate``).

The fast path is ``jsonc.decode`` straight into the typed model; the
friendly messages for type errors and unknown keys are built only when it
fails (``difflib`` is imported then, not before).
"""

from __future__ import annotations

import os
import re
import stat

import msgspec

from fence.config import jsonc, validate
from fence.config.errors import ConfigError, Problem, invalid
from fence.policy import Policy

MAX_CONFIG_BYTES = 1024 * 1024
"""Largest config fence reads (1 MiB); real configs are a few KB."""

_BOM = b"\xef\xbb\xbf"


def read_bytes(path: str, label: str | None = None) -> bytes | None:
    """The bytes of config file ``path`` (None when it does not exist)."""
    label = label or path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None  # a path component is a file: nothing there
    except IsADirectoryError:
        raise ConfigError(
            f"failed to read config file {label}: it is a directory; give the path of a fence.json or fence.jsonc file"
        ) from None
    except PermissionError:
        raise ConfigError(
            f"failed to read config file {label}: permission denied; make it readable (chmod u+r) or use another file"
        ) from None
    except OSError as e:
        raise ConfigError(f"failed to read config file {label}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(
                f"failed to read config file {label}: it is a directory; give the path of a "
                "fence.json or fence.jsonc file"
            )
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(
                f"failed to read config file {label}: not a regular file (a FIFO, device or "
                "socket); fence reads configs from regular files only"
            )
        if st.st_size > MAX_CONFIG_BYTES:
            raise _too_large(label, st.st_size)
        chunks = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_CONFIG_BYTES:
            raise _too_large(label, size)
        return b"".join(chunks)
    except OSError as e:
        raise ConfigError(f"failed to read config file {label}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _too_large(label: str, size: int) -> ConfigError:
    return ConfigError(
        f"failed to read config file {label}: it is larger than {MAX_CONFIG_BYTES // 1024} KiB "
        f"({size} bytes or more); fence stops reading configs at {MAX_CONFIG_BYTES} bytes. "
        "Is this the right file?"
    )


def load_file(path: str, label: str | None = None) -> Policy | None:
    """Load and validate one config file; None when it is missing, blank or only comments."""
    data = read_bytes(path, label)
    return None if data is None else parse(data, label or path)


def parse(data: bytes, label: str) -> Policy | None:
    """Decode and validate config bytes; ``label`` names the source in messages."""
    if len(data) > MAX_CONFIG_BYTES:
        raise _too_large(label, len(data))
    if data.startswith(_BOM):
        data = b"   " + data[3:]
    if not data.strip():
        return None
    nul = data.find(b"\0")
    if nul != -1:
        line, col = jsonc.position(data, nul)
        raise ConfigError(
            f"invalid JSON in config file {label}: line {line}, column {col}: NUL byte: this looks "
            "like a binary file, not a JSON config"
        )
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, col = jsonc.position(data, e.start)
        raise ConfigError(
            f"invalid JSON in config file {label}: line {line}, column {col}: not UTF-8 text "
            f"(byte 0x{data[e.start]:02x}); save the file as UTF-8"
        ) from None
    try:
        policy = jsonc.decode(data, Policy)
    except jsonc.JSONCSyntaxError as e:
        if not jsonc.strip(data).strip():
            return None  # only comments
        raise ConfigError(f"invalid JSON in config file {label}: {e}") from None
    except msgspec.ValidationError as e:
        raise invalid(label, _explain_validation(data, str(e))) from None
    except RecursionError:
        raise _too_deep(label) from None
    found = validate.problems(policy)
    if found:
        raise invalid(label, found)
    return validate.normalize(policy)


def _too_deep(label: str) -> ConfigError:
    return ConfigError(f"invalid configuration in {label}: nesting too deep to be a fence config")


# --- friendly type and unknown-key messages (error path only) ----------------------

# patterns compiled on first use (re caches them): this is the error path
_UNKNOWN = r"(?s)Object contains unknown field `(.*?)`(?: - at `(\$[^`]*)`)?$"
_AT = r"(?s)^(.*) - at `(\$[^`]*)`$"
_INDEX = r"\[\d+\]"


def _fields(cls) -> dict[str, tuple[str, object]]:
    """encode name -> (attribute name, default) of a Struct class."""
    names = cls.__struct_fields__
    defaults = cls.__struct_defaults__
    pad = len(names) - len(defaults)
    return {
        enc: (name, defaults[i - pad] if i >= pad else None)
        for i, (name, enc) in enumerate(zip(names, cls.__struct_encode_fields__, strict=True))
    }


def _sub_struct(default):
    factory = getattr(default, "factory", None)
    return factory if isinstance(factory, type) and hasattr(factory, "__struct_fields__") else None


def _class_at(path: list[str]):
    cls = Policy
    for key in path:
        entry = _fields(cls).get(key)
        sub = _sub_struct(entry[1]) if entry else None
        if sub is None:
            return None
        cls = sub
    return cls


def _all_paths(cls=Policy, prefix: str = "") -> dict[str, str]:
    """lower-cased key -> dotted path, for every key anywhere in the model."""
    out: dict[str, str] = {}
    for enc, (_, default) in _fields(cls).items():
        path = f"{prefix}{enc}"
        out.setdefault(enc.lower(), path)
        sub = _sub_struct(default)
        if sub is not None:
            out.update({k: v for k, v in _all_paths(sub, path + ".").items() if k not in out})
    return out


def suggest(key: str, known: list[str]) -> str | None:
    """The known key ``key`` was probably meant to be, or None."""
    import difflib  # lazy: only an unknown name needs suggestions (difflib ~1 ms)

    squashed = key.replace("_", "").replace("-", "").lower()
    for k in known:
        if k.lower() == squashed or k.lower() == key.lower():
            return k
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return close[0]
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(squashed, list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def unknown_key_message(path: list[str], key: str) -> str:
    cls = _class_at(path)
    known = list(_fields(cls)) if cls is not None else []
    where = ".".join(path)
    hint = suggest(key, known)
    if hint:
        return f'unknown key "{key}"; did you mean "{hint}"?'
    elsewhere = _all_paths().get(key.replace("_", "").replace("-", "").lower())
    if elsewhere and elsewhere.rsplit(".", 1)[0] != where:
        return f'unknown key "{key}"; it belongs at {elsewhere} (move it there)'
    listed = ", ".join(known)
    return f'unknown key "{key}"; remove it (keys allowed {"in " + where if where else "here"}: {listed})'


def _unknown_keys(value, cls, path: list[str], out: list[Problem]) -> None:
    if not isinstance(value, dict):
        return
    fields = _fields(cls)
    for key, sub_value in value.items():
        entry = fields.get(key)
        if entry is None:
            out.append(("$" + "".join(f".{p}" for p in path) + f".{key}", unknown_key_message(path, key)))
            continue
        sub = _sub_struct(entry[1])
        if sub is not None:
            _unknown_keys(sub_value, sub, [*path, key], out)


_TYPE_WORDS = {
    "str": "a string",
    "int": "an integer",
    "bool": "true or false",
    "array": "a list",
    "object": "an object",
    "null": "null",
    "float": "a number",
    "bool | null": "true, false or null",
}


def _describe_field(path: str) -> str:
    """What the field at JSONPath ``path`` holds, e.g. "network.allowedDomains is a list of strings"."""
    parts = [p for p in re.sub(_INDEX, "", path).lstrip("$").split(".") if p]
    if not parts:
        return ""
    cls = _class_at(parts[:-1])
    if cls is None:
        return ""
    entry = _fields(cls).get(parts[-1])
    if entry is None:
        return ""
    default = entry[1]
    factory = getattr(default, "factory", None)
    if _sub_struct(default) is not None:
        what = "an object"
    elif factory is list:
        what = "a list of integers" if parts[-1].endswith("Ports") else "a list of strings"
    elif default is None:
        what = "true, false or null"
    elif isinstance(default, bool):
        what = "true or false"
    elif isinstance(default, int):
        what = "an integer"
    else:
        what = "a string"
    return f"{'.'.join(parts)} is {what}"


def _explain_validation(data: bytes, message: str) -> list[Problem]:
    """msgspec's first ValidationError, rewritten; all unknown keys when that is the problem."""
    m = re.match(_UNKNOWN, message)
    if m:
        found: list[Problem] = []
        try:
            _unknown_keys(jsonc.decode(data), Policy, [], found)
        except (RecursionError, ValueError, msgspec.DecodeError):
            found = []
        if found:
            return found
        key, at = m.group(1), m.group(2) or "$"
        path = [p for p in re.sub(_INDEX, "", at).lstrip("$").split(".") if p]
        return [(at + f".{key}", unknown_key_message(path, key))]
    m = re.match(_AT, message)
    text, at = (m.group(1), m.group(2)) if m else (message, "$")
    text = text[:1].lower() + text[1:]
    described = _describe_field(at)
    if described:
        text = f"{text}; {described}"
    elif at == "$":
        text = f'{text}; a fence config is a JSON object, e.g. {{"network": {{"allowedDomains": ["example.com"]}}}}'
    return [(at, text)]
