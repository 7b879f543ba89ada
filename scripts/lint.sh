#!/usr/bin/env bash
# Lint the tree: mypy, then `ruff check`, then `ruff format --check` (CI runs this before the tests).
#   scripts/lint.sh            all three; exits non-zero if any of them fails
# The tools come from the `lint` extra (scripts/setup.sh --test installs it into .venv).
#
# Why a shadow tree: the import package `fence` is assembled by setuptools' package-dir
# (libs/fence + services/*), which mypy cannot follow from the source tree. So the package is
# laid out as symlinks under build/lint/src (git-ignored, rebuilt on every run) from pyproject's
# own package list, mypy checks that, and every path it prints is mapped back to the repo file.
set -uo pipefail
cd "$(dirname "$0")/.."

bin=.venv/bin
for tool in python mypy ruff; do
  if [ ! -x "$bin/$tool" ]; then
    echo "lint: $bin/$tool missing: run scripts/setup.sh --test" >&2
    exit 2
  fi
done

shadow=build/lint/src
rm -rf build/lint
# Lay the package out as setuptools would install it: one folder per listed package, with a
# symlink per module pointing at the file in the source tree.
"$bin/python" - "$shadow" <<'EOF' || exit 2
import os, sys, tomllib

shadow = sys.argv[1]
with open("pyproject.toml", "rb") as f:
    setuptools = tomllib.load(f)["tool"]["setuptools"]
package_dir = setuptools.get("package-dir", {})


def source_dir(package: str) -> str:
    """The folder setuptools takes `package` from: its longest mapped prefix plus the rest."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in package_dir:
            return os.path.join(package_dir[prefix], *parts[cut:])
    return os.path.join(package_dir.get("", "."), *parts)


for package in setuptools["packages"]:
    src = source_dir(package)
    dest = os.path.join(shadow, *package.split("."))
    os.makedirs(dest, exist_ok=True)
    for name in sorted(os.listdir(src)):
        if name.endswith((".py", ".pyi")):
            os.symlink(os.path.relpath(os.path.join(src, name), dest), os.path.join(dest, name))
EOF

status=0

# Checked as well: the tests (their helpers import each other as top-level modules, e.g.
# conftest) and the benchmarks' shared module.
echo "lint: mypy" >&2
MYPYPATH="$shadow:tests:bench" "$bin/mypy" --config-file pyproject.toml "$shadow/fence" tests bench/_common.py \
  | "$bin/python" -c '
import os, sys
shadow = sys.argv[1] + os.sep
for line in sys.stdin:
    path, sep, rest = line.partition(":")
    if sep and path.startswith(shadow):
        line = os.path.relpath(os.path.realpath(path)) + sep + rest
    sys.stdout.write(line)
' "$shadow"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

# One line per finding (CI logs stay short); `ruff check FILE` or `ruff format --diff FILE` shows the detail.
echo "lint: ruff check" >&2
"$bin/ruff" check --config pyproject.toml --output-format concise . || status=1

echo "lint: ruff format --check" >&2
"$bin/ruff" format --config pyproject.toml --check --output-format concise . || status=1

exit $status
