#!/usr/bin/env bash
# Apply the mechanical part of the lint rules to the whole tree: import sorting (ruff's I rules)
# and formatting, the two things `scripts/lint.sh` checks but never changes. Run it in a commit of
# its own (it touches most files), then scripts/lint.sh should pass.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff=.venv/bin/ruff
if [ ! -x "$ruff" ]; then
  echo "format: $ruff missing: run scripts/setup.sh --test" >&2
  exit 2
fi
"$ruff" check --config pyproject.toml --select I --fix .
"$ruff" format --config pyproject.toml .
