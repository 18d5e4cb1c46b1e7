#!/usr/bin/env bash
# Regenerate constraints.txt from the project venv (after a fresh install that passed the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# Exact versions of a fresh install that passed the test suite (Python 3.11, CPU)."
  echo "# Used as pip constraints by scripts/setup_env.sh; regenerate with scripts/lock.sh."
  .venv/bin/pip freeze --exclude-editable | grep -v -i '^recbole-bifair' | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/'
} > constraints.txt
