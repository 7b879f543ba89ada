#!/usr/bin/env bash
# Set fence up and show it at work: a sandboxed command whose write is refused.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
fence=.venv/bin/fence
target="$HOME/fence-demo-$$.txt"

echo "== 1. a sandboxed command tries to write $target"
set +e
"$fence" -- sh -c "echo 'written from the sandbox' > '$target'"
code=$?
set -e
echo "   exit code: $code"
if [ -e "$target" ]; then
  echo "   UNEXPECTED: the file exists on the host" >&2; rm -f "$target"; exit 1
fi
echo "   on the host: $target does not exist - the write was refused"

echo "== 2. the sandbox's own /tmp is private and writable"
"$fence" -- sh -c 'echo "hello from inside" > /tmp/note && cat /tmp/note'

echo "== 3. no network: interfaces inside the sandbox"
"$fence" -- cat /proc/net/dev | tail -n +3 | cut -d: -f1

echo "== 4. what fence ran (fence -d)"
"$fence" -d -- true
