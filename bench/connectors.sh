#!/usr/bin/env bash
# The cloud connectors under load: N concurrent calls per platform, each played in real time by
# the platform's test client (tests/clients/: Twilio two-track, AudioHook stereo, AudioSocket
# mono; the caller says 23.6 s genuine then an 8.9 s espeak-ng clone), into the release daemon.
# Reports, per platform, the CPU of the "connect" threads (WebSocket/TCP, the protocol session,
# base64 and G.711) per second of call audio beside the detection path's, and the alerts.
#
#   bench/connectors.sh              # 20 calls at once per platform (about 2 min)
#   N=40 bench/connectors.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${N:-20}
PY=$ROOT/.deps/venv/bin/python
source bench/lib.sh
[ -x "$PY" ] || scripts/setup.sh >&2
[ -f .deps/audio/genuine_3.wav ] || scripts/make-test-audio.sh >&2
cargo build --release --quiet
work=$(mktemp -d)
daemon=
trap 'kill $daemon 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
caller=(.deps/audio/genuine_3.wav .deps/audio/synthetic_espeak.wav)
agent=(.deps/audio/genuine_1.wav .deps/audio/genuine_2.wav .deps/audio/genuine_1.wav)
export CALLGUARD_BENCH_TWILIO=twilio-token CALLGUARD_BENCH_HOOK_KEY=hook-key
secret=$(printf 'audiohook-client-secret' | base64)
export CALLGUARD_BENCH_HOOK_SECRET=$secret

for platform in twilio audiohook audiosocket; do
  cat > "$work/daemon.toml" <<TOML
[speech]
vad_model = "$ROOT/.deps/silero_vad.onnx"
[detector]
model = "$ROOT/models/detector.onnx"
[server]
listen = "127.0.0.1:0"
max_calls_per_tenant = 10000
[[server.tenants]]
name = "bank-a"
token_sha256 = "$(printf bench | sha256sum | cut -d' ' -f1)"
[store]
path = "$work/alerts-$platform.db"
[transcribe]
enabled = false
[connectors]
listen = "127.0.0.1:0"
[[connectors.twilio]]
tenant = "bank-a"
auth_token_env = "CALLGUARD_BENCH_TWILIO"
[[connectors.audiohook]]
tenant = "bank-a"
api_key_env = "CALLGUARD_BENCH_HOOK_KEY"
client_secret_env = "CALLGUARD_BENCH_HOOK_SECRET"
[[connectors.audiosocket]]
listen = "127.0.0.1:0"
tenant = "bank-a"
TOML
  log=$work/daemon-$platform.log
  CALLGUARD_LOG=info target/release/callguard --config "$work/daemon.toml" run --json \
    >"$work/events-$platform.jsonl" 2>"$log" &
  daemon=$!
  wait_listening "$log" "AudioSocket"
  ws=$(grep -o 'connectors listening on [0-9.:]*' "$log" | awk '{print $4}')
  tcp=$(grep -o 'AudioSocket listening on [0-9.:]*' "$log" | awk '{print $4}')
  cpu_by_thread "$daemon" >"$work/cpu-$platform.txt" &
  sampler=$!
  start=$(date +%s.%N)
  pids=()
  for i in $(seq "$N"); do
    case $platform in
      twilio) "$PY" tests/clients/twilio_client.py --url "ws://$ws/twilio/bank-a" --auth-token twilio-token \
                --stream-sid "MZbench$i" --call-sid "CAbench$i" --inbound "${caller[@]}" --outbound "${agent[@]}" ;;
      audiohook) "$PY" tests/clients/audiohook_client.py --url "ws://$ws/audiohook/bank-a" --api-key hook-key \
                --client-secret "$secret" --session-id "$(printf '%08d-0000-4000-8000-%012d' "$i" "$i")" \
                --external "${caller[@]}" --internal "${agent[@]}" ;;
      audiosocket) "$PY" tests/clients/audiosocket_client.py --addr "$tcp" \
                --uuid "$(printf '%08d-0000-4000-8000-%012d' "$i" "$i")" "${caller[@]}" ;;
    esac >"$work/client-$platform-$i.out" 2>&1 &
    pids+=($!)
    sleep 0.2
  done
  fails=0
  for p in "${pids[@]}"; do wait "$p" || fails=$((fails + 1)); done
  wall=$("$PY" -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$start" "$(date +%s.%N)")
  sleep 3
  kill -INT "$daemon"; wait "$daemon" 2>/dev/null || true
  kill "$sampler" 2>/dev/null || true
  "$PY" - "$work" "$platform" "$N" "$wall" "$fails" <<'PY'
import json, sys
work, platform, n, wall, fails = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
ended = [json.loads(l)["summary"] for l in open(f"{work}/events-{platform}.jsonl") if '"event":"ended"' in l]
audio_s = sum(s["audio_ms"] for s in ended) / 1000
rows = [l.split() for l in open(f"{work}/cpu-{platform}.txt") if len(l.split()) == 4]
connect, other = float(rows[-1][1]), float(rows[-1][2])
onset = 23.64
delays = sorted(s["first_alert_ms"] / 1000 - onset for s in ended if s.get("first_alert_ms") is not None)
print(json.dumps({
    "platform": platform, "calls": n, "client_failures": fails, "calls_ended": len(ended),
    "wall_s": round(wall, 1), "call_audio_s": round(audio_s, 1),
    "windows_dropped": sum(s["windows_dropped"] for s in ended), "clones_alerted": len(delays),
    "alert_delay_after_onset_p50_s": delays[len(delays) // 2] if delays else None,
    "connect_ms_per_call_s": round(connect / max(audio_s, 1e-9) * 1000, 3),
    "detection_ms_per_call_s": round(other / max(audio_s, 1e-9) * 1000, 3),
}))
PY
done
