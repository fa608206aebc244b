#!/usr/bin/env bash
# The README's first command: install, then fine-tune the real MiniLM encoder on the review
# sample that ships with edge-zo (edge_zo/samples/), printing accuracy before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
EDGE_ZO=.venv/bin/edge-zo
BUNDLE=runs/quickstart/bundle

# Host side, once: MiniLM -> ONNX training bundle with low-rank probe inputs.
[ -f "$BUNDLE/manifest.json" ] || \
  $EDGE_ZO export minilm --task classification --label-words negative,positive \
    --max-seq-len 64 --out "$BUNDLE"

# Device side: zeroth-order fine-tuning (lands with issue 6; until then this stops here).
if $EDGE_ZO finetune --bundle "$BUNDLE" --data edge_zo/samples/reviews-train.jsonl \
     --eval-data edge_zo/samples/reviews-test.jsonl --optimizer zo-mopi \
     --out runs/quickstart/run steps=300; then
  echo "quickstart: done; run folder runs/quickstart/run"
else
  code=$?
  [ "$code" -eq 3 ] || exit "$code"
  echo "quickstart: exported $BUNDLE; fine-tuning is not in this build yet"
fi
