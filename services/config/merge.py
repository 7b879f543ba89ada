"""Merging configs (``extends``) and recording which source set each field.

The rules (Fence's; the table is in docs/configuration.md#merge-rules):

* list (domains, paths, commands, hosts, ports, mach services): base then child, duplicates
  removed keeping the first; when one side is empty the other is kept as is
* plain bool (allowPty, allowLocalBinding, defaultDenyRead, ...): OR, a child can never switch a
  base ``true`` off
* optional bool (forceNewSession, allowLocalOutbound, wslInterop, useDefaults): the child's value
  when set (not null)
* int (httpProxyPort, socksProxyPort): the child's value when non-zero
* size, a string or an int (filesystem.tmpSize, shmSize): the child's value when set (non-empty,
  non-zero)
* string / enum (upstreamProxy, defaultAction, devices.mode, runtimeExecPolicy, $schema): the
  child's value when non-empty
* ``extends``: always "" in the result

``defaultDenyRead`` is also switched on when either side has ``strictDenyRead``.

The kind of each field is read from its default (``[]``, ``False``,
``None``, ``0``, ``""`` or a nested section), so a field added to the model
merges correctly without touching this module -- and without the ~25 ms
that resolving the type annotations would cost on every run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fence.messages import FieldSource
from fence.policy import FilesystemConfig, Policy

LIST, BOOL, OPTIONAL, SCALAR, SECTION = range(5)


def _plan(cls) -> list[tuple[str, str, int, object]]:
    """(attribute, JSON name, kind, nested plan) for each field of a Struct class."""
    names = cls.__struct_fields__
    defaults = cls.__struct_defaults__
    assert len(defaults) == len(names), f"{cls.__name__}: every config field needs a default"
    out: list[tuple[str, str, int, object]] = []
    for name, enc, default in zip(names, cls.__struct_encode_fields__, defaults, strict=True):
        factory = getattr(default, "factory", None)
        if factory is list:
            out.append((name, enc, LIST, None))
        elif factory is not None:
            out.append((name, enc, SECTION, (factory, _plan(factory))))
        elif default is None:
            out.append((name, enc, OPTIONAL, None))
        elif isinstance(default, bool):
            out.append((name, enc, BOOL, None))
        elif isinstance(default, (int, str)):
            out.append((name, enc, SCALAR, None))
        else:  # pragma: no cover - a new kind of field needs a rule here
            raise TypeError(f"{cls.__name__}.{name}: no merge rule for default {default!r}")
    return out


PLAN = _plan(Policy)


def merge_lists(base: list, override: list) -> list:
    if not base:
        return list(override)
    if not override:
        return list(base)
    return list(dict.fromkeys(base + override))


def _merge(base, override, cls, plan):
    values = []
    for name, _, kind, sub in plan:
        a = getattr(base, name)
        b = getattr(override, name)
        if kind == LIST:
            values.append(merge_lists(a, b))
        elif kind == BOOL:
            values.append(a or b)
        elif kind == OPTIONAL:
            values.append(a if b is None else b)
        elif kind == SCALAR:
            values.append(b or a)
        else:
            values.append(_merge(a, b, *sub))
    out = cls(*values)
    if cls is FilesystemConfig and (out.strict_deny_read or out.default_deny_read):
        out.default_deny_read = True
    return out


def merge(base: Policy, override: Policy) -> Policy:
    """``override`` (the extending config) on top of ``base`` (what it extends)."""
    out = _merge(base, override, Policy, PLAN)
    out.extends = ""
    return out


def set_values(policy, plan=PLAN, prefix: str = ""):
    """Yield (dotted JSON path, kind, value) of every field ``policy`` sets (differs from "unset")."""
    for name, enc, kind, sub in plan:
        value = getattr(policy, name)
        if kind == SECTION:
            yield from set_values(value, sub[1], f"{prefix}{enc}.")
        elif kind == OPTIONAL:
            if value is not None:
                yield f"{prefix}{enc}", kind, value
        elif value:
            yield f"{prefix}{enc}", kind, value


def set_fields(policy, plan=PLAN, prefix: str = ""):
    """Yield (dotted JSON path, kind) of every field ``policy`` sets (differs from "unset")."""
    for path, kind, _ in set_values(policy, plan, prefix):
        yield path, kind


def field_sources(chain: Sequence[tuple[int, Policy]]) -> dict[str, FieldSource]:
    """Which source set each field of the merged result: the provenance records, made here once.

    ``chain`` is (the source's index in the reply's chain, that source's own
    config) from the innermost base to the config that was asked for (the
    order the merge applies them).  The rules follow the merge's: a list
    names every source that contributed, and when there are several, which
    of them list each entry (so a message can name the file a rule came
    from); a true plain bool names the first source that set it (a child
    cannot undo it); any other value names the last source that set it.
    """
    sources: dict[str, list[int]] = {}
    lists: dict[str, list[tuple[int, list]]] = {}
    for index, policy in chain:
        for path, kind, value in set_values(policy):
            if path == "extends":
                continue
            if kind == LIST:
                sources.setdefault(path, []).append(index)
                lists.setdefault(path, []).append((index, value))
            elif kind == BOOL:
                sources.setdefault(path, [index])
            else:
                sources[path] = [index]
    out: dict[str, FieldSource] = {}
    for path, indices in sources.items():
        owners: dict[str, list[int]] = {}
        if len(indices) > 1 and path in lists:
            for index, value in lists[path]:
                for entry in dict.fromkeys(value):
                    owners.setdefault(str(entry), []).append(index)
        out[path] = FieldSource(sources=indices, owners=owners)
    return out


def provenance_labels(fields: Mapping[str, FieldSource], names: Sequence[str]) -> dict[str, str]:
    """The records for people: each field -> its sources' names joined with " + " (``fence config show``)."""
    return {path: " + ".join(names[i] for i in record.sources) for path, record in fields.items()}
