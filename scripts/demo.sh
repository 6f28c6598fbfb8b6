#!/usr/bin/env bash
# The main job without a sound card: set up, build, and scan a genuine and a synthetic call.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "demo: building callguard (release; the first build takes several minutes)" >&2
cargo build --release
exec target/release/callguard scan .deps/audio/genuine_1.wav .deps/audio/synthetic_espeak_ulaw.wav "$@"
