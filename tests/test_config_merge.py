"""Merge laws (docs/configuration.md#merge-rules) as properties over generated configs."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from fence.config.merge import (
    BOOL,
    LIST,
    OPTIONAL,
    PLAN,
    SCALAR,
    field_sources,
    merge,
    merge_lists,
    provenance_labels,
    set_fields,
    set_values,
)
from fence.config.validate import normalize
from fence.policy import Policy

_strings = st.sampled_from(["a.com", "b.com", "*.c.com", "git push", "~/.ssh", ".", "/tmp", "x"])
_ints = st.sampled_from([0, 1, 22, 8080, 65535])


def _section(cls, plan):
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, _, kind, sub in plan:
        if kind == LIST:
            fields[name] = st.lists(_ints if name.endswith("ports") else _strings, max_size=4)
        elif kind == BOOL:
            fields[name] = st.booleans()
        elif kind == OPTIONAL:
            fields[name] = st.one_of(st.none(), st.booleans())
        elif kind == SCALAR:
            default = getattr(cls(), name)
            fields[name] = _ints if isinstance(default, int) else st.sampled_from(["", "", "deny", "proxy", "x"])
        else:
            fields[name] = _section(*sub)
    return st.builds(cls, **fields)


policies = _section(Policy, PLAN).map(normalize)


def without_extends(p: Policy) -> Policy:
    return msgspec.structs.replace(p, extends="")


def lists_of(p: Policy) -> dict:
    return {path: _get(p, path) for path, kind in _all_fields() if kind == LIST}


def _all_fields(plan=PLAN, prefix=""):
    for name, _enc, kind, sub in plan:
        if sub is not None:
            yield from _all_fields(sub[1], f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", kind


def _get(p, path):
    for part in path.split("."):
        p = getattr(p, part)
    return p


@settings(max_examples=200, deadline=None)
@given(policies)
def test_merging_with_defaults_is_identity_up_to_extends(p):
    assert merge(Policy(), p) == without_extends(p)
    assert merge(p, Policy()) == without_extends(p)


@settings(max_examples=200, deadline=None)
@given(policies, policies)
def test_result_never_extends(a, b):
    assert merge(a, b).extends == ""


@settings(max_examples=200, deadline=None)
@given(policies)
def test_lists_keep_first_occurrences_and_merge_is_idempotent(p):
    once = merge(p, p)
    for path, kind in _all_fields():
        if kind == LIST:
            value = _get(p, path)
            assert _get(once, path) == list(dict.fromkeys(value))
    assert merge(once, once) == once


@settings(max_examples=200, deadline=None)
@given(st.lists(_strings, max_size=6), st.lists(_strings, max_size=6))
def test_list_merge_appends_and_dedupes_keeping_first(a, b):
    out = merge_lists(a, b)
    if not a:
        assert out == b
    elif not b:
        assert out == a
    else:
        assert out == list(dict.fromkeys(a + b))
        assert set(out) == set(a) | set(b)
        assert out[: len(dict.fromkeys(a))] == list(dict.fromkeys(a))  # base order first


@settings(max_examples=200, deadline=None)
@given(policies, policies)
def test_plain_bools_or_and_are_monotone(a, b):
    out = merge(a, b)
    for path, kind in _all_fields():
        if kind == BOOL:
            assert _get(out, path) == (_get(a, path) or _get(b, path))
            if _get(a, path):
                assert _get(out, path)  # a child never switches a base true off


@settings(max_examples=200, deadline=None)
@given(policies, policies)
def test_child_wins_when_set(a, b):
    out = merge(a, b)
    for path, kind in _all_fields():
        if kind == OPTIONAL:
            assert _get(out, path) == (_get(a, path) if _get(b, path) is None else _get(b, path))
        elif kind == SCALAR and path != "extends":
            assert _get(out, path) == (_get(b, path) or _get(a, path))


@settings(max_examples=200, deadline=None)
@given(policies, policies, policies)
def test_merge_is_associative(a, b, c):
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


@settings(max_examples=100, deadline=None)
@given(policies, policies)
def test_merge_does_not_mutate_its_inputs(a, b):
    a_copy, b_copy = (
        msgspec.json.decode(msgspec.json.encode(a), type=Policy),
        msgspec.json.decode(msgspec.json.encode(b), type=Policy),
    )
    merge(a, b)
    assert a == a_copy and b == b_copy


def test_strict_deny_read_ors_into_default_deny_read():
    a = Policy()
    b = Policy()
    b.filesystem.strict_deny_read = True
    assert merge(a, b).filesystem.default_deny_read


@settings(max_examples=100, deadline=None)
@given(policies, policies)
def test_provenance_names_a_source_for_every_set_field(a, b):
    a.extends = b.extends = ""
    out = merge(a, b)
    fields = field_sources([(1, a), (0, b)])  # indices as in a reply's chain: the child first
    assert set(fields) == {path for path, _ in set_fields(out) if path != "extends"}
    own = {i: {path: value for path, _, value in set_values(p)} for i, p in ((1, a), (0, b))}
    for path, kind, value in set_values(out):
        if path == "extends":
            continue
        record = fields[path]
        assert set(record.sources) <= {0, 1} and all(path in own[i] for i in record.sources)
        if kind == LIST and len(record.sources) == 2:  # each entry names exactly the sources that list it
            assert record.sources == [1, 0]
            for entry in value:
                assert record.owners[str(entry)] == [i for i in (1, 0) if entry in own[i][path]]
        else:
            assert not record.owners
    labels = provenance_labels(fields, ["child", "base"])
    assert all(set(label.split(" + ")) <= {"base", "child"} for label in labels.values())
