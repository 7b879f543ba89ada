"""The JSON Schema of a fence config, generated from the model (``fence.policy``).

``generate()`` is what ``fence config schema`` prints and what
``docs/schema/fence.schema.json`` holds (a test fails when the committed
file drifts from the model).  Regenerate with::

    python -m fence.config.schema > docs/schema/fence.schema.json

Defaults and types come from msgspec's schema of the model; descriptions
are the docstrings under each field of ``fence/policy.py`` (read here with
``ast``, so they cost nothing at run time) and ``policy.SCHEMA_EXTRA`` adds
value constraints (enums, port ranges, patterns).  Every object has
``additionalProperties: false`` (fence rejects unknown keys, with a "did you
mean").  The ``$id`` is the Go tool Fence's, whose config
language this is: files pointing their ``$schema`` at it validate here too.
"""

from __future__ import annotations

import ast
import itertools
import json
import sys
from typing import Any

import msgspec

from fence import policy as model
from fence.policy import Policy

SCHEMA_ID = "https://raw.githubusercontent.com/fencesandbox/fence/main/docs/schema/fence.schema.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def field_docs() -> dict[str, dict[str, str]]:
    """class name -> {attribute name: docstring} from the source of ``fence.policy``."""
    with open(model.__file__, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    out: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs = out.setdefault(node.name, {})
        body = node.body
        for stmt, nxt in itertools.pairwise(body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return out


def _describe(defs: dict) -> None:
    docs = field_docs()
    for class_name, definition in defs.items():
        cls = getattr(model, class_name)
        names = dict(zip(cls.__struct_encode_fields__, cls.__struct_fields__, strict=True))
        properties = {}
        for json_name, prop in definition["properties"].items():
            described: dict[str, Any] = {}
            doc = docs.get(class_name, {}).get(names[json_name])
            if doc:
                described["description"] = doc
            described.update(prop)
            extra = model.SCHEMA_EXTRA.get(f"{class_name}.{json_name}", {})
            for key, value in extra.items():
                if key == "items" and isinstance(described.get("items"), dict):
                    described["items"] = {**described["items"], **value}
                else:
                    described[key] = value
            properties[json_name] = described
        definition["properties"] = properties
        definition.pop("required", None)


def generate() -> dict:
    raw = msgspec.json.schema(Policy)
    defs = raw["$defs"]
    _describe(defs)
    root = defs.pop("Policy")
    return {
        "$schema": DIALECT,
        "$id": SCHEMA_ID,
        "title": "fence configuration",
        **{k: v for k, v in root.items() if k != "title"},
        "$defs": defs,
    }


def render() -> str:
    return json.dumps(generate(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
