"""The JSON Schema of a fence config, generated from the model (``fence.policy``).

``generate()`` is what ``fence config schema`` prints and what
``docs/schema/fence.schema.json`` holds (a test fails when the committed
file drifts from the model).  Regenerate with::

    python -m fence.config.schema > docs/schema/fence.schema.json

Descriptions and defaults come from the model's ``msgspec.Meta``; every
object has ``additionalProperties: false`` (fence rejects unknown keys, with
a "did you mean").  The ``$id`` is the reference tool's, whose config
language this is: files pointing their ``$schema`` at it validate here too.
"""

from __future__ import annotations

import json
import sys

import msgspec

from fence.policy import Policy

SCHEMA_ID = "https://raw.githubusercontent.com/fencesandbox/fence/main/docs/schema/fence.schema.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def generate() -> dict:
    raw = msgspec.json.schema(Policy)
    defs = raw["$defs"]
    root = defs.pop("Policy")
    root.pop("required", None)
    for definition in defs.values():
        definition.pop("required", None)
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
