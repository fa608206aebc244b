#!/bin/sh
# The GPU images' optional extras (EXTRAS=plot,tensorboard): their own requirements, read
# from the installed package's metadata like the runtime's, so that a plain
# `pip install ".[plot]"` does not bring the CPU onnxruntime back; torch must stay out.
set -eu
EXTRAS="${1:-}"
case ",${EXTRAS}," in *,export,*) echo "EXTRAS: export is the host exporter (torch), not for this image" >&2; exit 1;; esac
[ -n "${EXTRAS}" ] || exit 0
EXTRAS="${EXTRAS}" python3 -c "import importlib.metadata as md, os; want = set(os.environ['EXTRAS'].split(',')); print('\n'.join(r.split(';')[0] for r in md.requires('edge-zo') if 'extra ==' in r and r.split('extra ==')[1].strip().strip(chr(34) + chr(39)) in want))" > /tmp/extras.txt
python3 -m pip install -r /tmp/extras.txt
rm /tmp/extras.txt
if python3 -m pip show -q onnxruntime 2>/dev/null; then
    echo "EXTRAS: the CPU onnxruntime came in beside onnxruntime-gpu" >&2; exit 1
fi
python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
