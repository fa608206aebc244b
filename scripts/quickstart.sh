#!/usr/bin/env bash
# The README's first command: install, then fine-tune the real MiniLM encoder on the review
# sample that ships with edge-zo (edge_zo/samples/), printing accuracy before and after.
# About 3 minutes on a 2-core laptop CPU once installed (the export takes about 1 more).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
EDGE_ZO=.venv/bin/edge-zo
BUNDLE=runs/quickstart/bundle
RUN=runs/quickstart/run
TRAIN=edge_zo/samples/reviews-train.jsonl
TEST=edge_zo/samples/reviews-test.jsonl
# MiniLM's label-embedding head compares the text's sentence embedding with each label
# word's: the bare text (review-plain), not a prompt around it, embeds best.
TEMPLATE=review-plain

# Host side, once: MiniLM -> ONNX training bundle with low-rank probe inputs. A bundle
# from an older edge-zo (no inference.onnx, no label-embedding head) is exported again.
if ! grep -q '"inference_file": "inference.onnx"' "$BUNDLE/manifest.json" 2>/dev/null; then
  $EDGE_ZO export minilm --task classification --label-words negative positive \
    --rank 8 --max-seq-len 64 --out "$BUNDLE" --force
fi

echo "quickstart: zero-shot accuracy on $TEST"
$EDGE_ZO eval --bundle "$BUNDLE" --data "$TEST" --template "$TEMPLATE"

# Device side: zeroth-order fine-tuning, forward passes only. N=2 probe directions
# (4 forwards a step) buys more steps in the time than N=4 at the same accuracy.
rm -rf "$RUN"
# No --eval-data: the test reviews must not choose anything, so the last iterate is scored.
$EDGE_ZO finetune --bundle "$BUNDLE" --data "$TRAIN" --optimizer zo-mopi \
  --out "$RUN" template=$TEMPLATE steps=150 optimizer.N=2 optimizer.eta=5e-2

echo "quickstart: accuracy after fine-tuning on $TEST"
$EDGE_ZO eval --run "$RUN" --data "$TEST" --weights last
echo "quickstart: done; run folder $RUN (edge-zo deploy $RUN --out model.onnx writes a servable model)"
