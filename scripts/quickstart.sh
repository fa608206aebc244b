#!/usr/bin/env bash
# The README's first command: install, then fine-tune the real MiniLM encoder on the review
# sample that ships with edge-zo (edge_zo/samples/), printing accuracy before and after:
# LP-then-ZO (a linear head fitted first, then zeroth-order steps on body and head).
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
# MiniLM's heads read the text's sentence embedding: the bare text (review-plain), not a
# prompt around it, embeds best.
TEMPLATE=review-plain

# Host side, once: MiniLM -> ONNX training bundle with low-rank probe inputs and a linear
# head (the default on an encoder; before it is fitted it scores zero-shot, by cosine to
# each label word's embedding). A bundle from an older edge-zo (no linear head) is
# exported again.
if ! grep -q '"dense": true' "$BUNDLE/manifest.json" 2>/dev/null; then
  $EDGE_ZO export minilm --task classification --label-words negative positive \
    --rank 8 --max-seq-len 64 --out "$BUNDLE" --force
fi

echo "quickstart: zero-shot accuracy on $TEST"
$EDGE_ZO eval --bundle "$BUNDLE" --data "$TEST" --template "$TEMPLATE"

# Device side, forward passes only: the linear probe fits the head on the training reviews
# (logistic regression in numpy), then ZO-MOPI fine-tunes the encoder (low-rank) and the
# head (ZO-SGD, one_d=sgd). N=2 probe directions (4 forwards a step) buys more steps in
# the time than N=4 at the same accuracy.
rm -rf "$RUN"
# No --eval-data: the test reviews must not choose anything, so the last iterate is scored.
$EDGE_ZO finetune --bundle "$BUNDLE" --data "$TRAIN" --optimizer zo-mopi --out "$RUN" \
  template=$TEMPLATE steps=100 optimizer.N=2 optimizer.eta=5e-2 optimizer.one_d=sgd optimizer.one_d_lr=1e-4

echo "quickstart: accuracy after fine-tuning on $TEST"
$EDGE_ZO eval --run "$RUN" --data "$TEST" --weights last
echo "quickstart: done; run folder $RUN (edge-zo deploy $RUN --out deployed/ writes a servable model folder; edge-zo predict deployed/ --data FILE runs it)"
