#!/bin/sh
# The GPU images' install of edge-zo (docker/cuda, docker/jetson: one block, here), run from
# the source folder after onnxruntime-gpu is in; $1 = EXTRAS (e.g. plot,tensorboard).
#
# Why --no-deps, then the dependency list read back from the installed metadata: the CPU
# `onnxruntime` and `onnxruntime-gpu` are different distributions that write the same
# `onnxruntime/` package, so a plain `pip install .` would put the CPU build over the GPU one.
# (Installing, uninstalling onnxruntime and reinstalling onnxruntime-gpu also works, but
# fetches the CPU wheel for nothing and breaks if a later layer reinstalls.) Reading the list
# from the metadata keeps pyproject.toml its only source; extras (torch) are left out. pip
# then warns "edge-zo requires onnxruntime, which is not installed": expected, the GPU build
# provides it. The checks after it fail the build if the CPU build or torch got in anyway.
# The provider check only proves a CUDA build got in; whether its kernels suit this GPU is
# known only when it runs, which edge-zo checks at start-up with one real CUDA run.
set -eu
EXTRAS="${1:-}"
case ",${EXTRAS}," in *,export,*) echo "EXTRAS: export is the host exporter (torch), not for this image" >&2; exit 1;; esac
python3 -m pip install --no-deps .
python3 -c "import importlib.metadata as md, re; print('\n'.join(r for r in md.requires('edge-zo') if 'extra ==' not in r and re.split(r'[^A-Za-z0-9._-]', r)[0] != 'onnxruntime'))" > /tmp/runtime-deps.txt
python3 -m pip install -r /tmp/runtime-deps.txt
rm /tmp/runtime-deps.txt
if python3 -m pip show -q onnxruntime 2>/dev/null; then  # (`! cmd` would not stop `set -e`)
    echo "the CPU onnxruntime got in beside onnxruntime-gpu" >&2; exit 1
fi
python3 -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers(), ort.get_available_providers()"

# The extras' own requirements, read from the metadata the same way, so that a plain
# `pip install ".[plot]"` does not bring the CPU onnxruntime back.
if [ -n "${EXTRAS}" ]; then
    EXTRAS="${EXTRAS}" python3 -c "import importlib.metadata as md, os; want = set(os.environ['EXTRAS'].split(',')); print('\n'.join(r.split(';')[0] for r in md.requires('edge-zo') if 'extra ==' in r and r.split('extra ==')[1].strip().strip(chr(34) + chr(39)) in want))" > /tmp/extras.txt
    python3 -m pip install -r /tmp/extras.txt
    rm /tmp/extras.txt
    if python3 -m pip show -q onnxruntime 2>/dev/null; then
        echo "EXTRAS: the CPU onnxruntime came in beside onnxruntime-gpu" >&2; exit 1
    fi
fi
# A device image: no torch, and no exporter (`edge-zo export` says how to install it on a host)
python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None or importlib.util.find_spec('edge_zo_export') is not None)"
