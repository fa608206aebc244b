#!/usr/bin/env bash
# The fleet by hand on 127.0.0.1 with real Flower processes (docs/fleet.md): a
# flower-superlink, three flower-supernodes (device k reads DATA with {k} = k), `flwr run`.
# Device 2 is killed with kill -9 after step 3 and started again (same folder) after step
# 6; at the end the three replicas' last checkpoints must be bit-identical.
#   bash scripts/fleet_localhost.sh BUNDLE 'shards/part-{k}.jsonl' WORK [STEPS]
# Needs edge-zo with the [fleet] extra in the Python on PATH (or $PYTHON). Uses port 8000
# (SuperLink) and 9094-9096 (SuperNodes); stops only the processes it started.
set -euo pipefail
BUNDLE=$(realpath "$1"); DATA=$2; WORK=$(realpath -m "$3"); STEPS=${4:-10}
PYTHON=${PYTHON:-python}
BIN=$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')")
export PATH="$BIN:$PATH" FLWR_HOME="$WORK/flwr-home"  # the SuperLink starts flower-superexec from PATH
mkdir -p "$WORK" "$FLWR_HOME"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do pkill -P "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

steps_done() { [ -f "$WORK/server/journal.jsonl" ] && wc -l < "$WORK/server/journal.jsonl" || echo 0; }
wait_steps() { for _ in $(seq 1 600); do [ "$(steps_done)" -ge "$1" ] && return; sleep 1; done; echo "timed out" >&2; exit 1; }
supernode() {
  local k=$1 data=${DATA//\{k\}/$1}
  flower-supernode --insecure --superlink 127.0.0.1:8000 --port $((9094 + k)) --node-config \
    "bundle=\"$BUNDLE\" data=\"$(realpath "$data")\" folder=\"$WORK/client-$k\" batch-size=8" \
    >> "$WORK/supernode-$k.log" 2>&1 &
  PIDS+=($!); NODE[$k]=$!
}

"$PYTHON" -m edge_zo.cli fleet --app "$WORK/app" --out "$WORK" --clients 3 --steps "$STEPS" --optimizer mezo \
  eta=1e-2 mu=1e-2
sed -i 's/^round-timeout = .*/round-timeout = 20.0/' "$WORK/app/pyproject.toml"  # drop a dead device fast
printf '[superlink.local-fleet]\naddress = "127.0.0.1:8000"\ninsecure = true\n' > "$FLWR_HOME/config.toml"
flower-superlink --insecure --disable-runtime-dependency-installation > "$WORK/superlink.log" 2>&1 &
PIDS+=($!)
sleep 8
declare -a NODE
for k in 0 1 2; do supernode $k; done
sleep 8
flwr run "$WORK/app" local-fleet --stream > "$WORK/run.log" 2>&1 &
RUN=$!
wait_steps 3
pkill -9 -P "${NODE[2]}" || true; kill -9 "${NODE[2]}"  # device 2 and its ClientApp, mid-run
wait_steps 6
supernode 2  # back with its folder: it catches up by replaying the server's journal
wait "$RUN"
grep "edge-zo fleet" "$WORK/run.log" || true
"$PYTHON" - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
import numpy as np
from edge_zo.checkpoint import load_latest
work = Path(sys.argv[1])
ckpts = [load_latest(work / f"client-{k}" / "checkpoints") for k in range(3)]
same = all(np.array_equal(ckpts[0].arrays[n], c.arrays[n]) for c in ckpts[1:] for n in ckpts[0].arrays)
journal = [json.loads(line) for line in (work / "server" / "journal.jsonl").read_text().splitlines()]
print(json.dumps({"replica_steps": [c.step for c in ckpts], "bit_identical": same,
                  "devices_per_step": [e["clients"] for e in journal],
                  **json.loads((work / "server" / "summary.json").read_text())}, indent=1))
sys.exit(0 if same else 1)
EOF
