#!/usr/bin/env bash
# SIPREC under load: sipp as the SBC records CALLS calls, CONCURRENT at once, each with two G.711
# streams (the caller: 23.6 s genuine then 8.9 s espeak-ng clone; the agent: genuine), into the
# release daemon. Reports what the SIP/RTP side costs next to detection (CPU seconds per second
# of call audio, by thread: the "connect" runtime runs SIP, RTP, the jitter buffers and G.711;
# everything else is the detection path), frames lost, and the alert delay after the clone starts.
#
#   bench/siprec.sh                                   # 40 calls, 20 at once (about 2 min)
#   CALLS=200 CONCURRENT=60 RATE=3 bench/siprec.sh    # a larger run
#   LONG=1 bench/siprec.sh                            # one 10-minute call: RSS over time, call time vs wall time
#
# Needs scripts/setup.sh (sipp, the venv, the test audio). Prints JSON lines; bench/README.md
# has the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CALLS=${CALLS:-40}
CONCURRENT=${CONCURRENT:-20}
RATE=${RATE:-2}
LONG=${LONG:-0}
PY=$ROOT/.deps/venv/bin/python
source bench/lib.sh
[ -x "$PY" ] || scripts/setup.sh >&2
[ -f .deps/audio/genuine_3.wav ] || scripts/make-test-audio.sh >&2
cargo build --release --quiet
work=$(mktemp -d)
daemon=
trap 'kill $daemon 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

if [ "$LONG" = 1 ]; then
  # 10.8 minutes of the Asterisk prompts on the caller stream; sipp's BYE after 10.7.
  caller=(); for _ in 1 2 3 4 5 6; do caller+=(.deps/audio/prompts.wav); done
  CALLS=1; CONCURRENT=1; call_ms=640000
else
  caller=(.deps/audio/genuine_3.wav .deps/audio/synthetic_espeak.wav)
  call_ms=33500
fi
"$PY" tests/clients/rtp_pcap.py make "${caller[@]}" --out "$work/caller.pcap" >/dev/null
"$PY" tests/clients/rtp_pcap.py make .deps/audio/genuine_3.wav .deps/audio/genuine_1.wav --out "$work/agent.pcap" >/dev/null

port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/daemon.toml" <<EOF
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
path = "$work/alerts.db"
[transcribe]
enabled = false
[siprec]
listen = "127.0.0.1:$port"
rtp_ports = [46000, 49999]
max_sessions = 10000
agent_aor = "@cc\\\\.bank\\\\.example\$"
[[siprec.peers]]
tenant = "bank-a"
addresses = ["127.0.0.1"]
EOF
CALLGUARD_LOG=info target/release/callguard --config "$work/daemon.toml" run --json >"$work/events.jsonl" 2>"$work/daemon.log" &
daemon=$!
wait_listening "$work/daemon.log" SIPREC

cpu_by_thread "$daemon" >"$work/cpu.txt" &
sampler=$!

start=$(date +%s.%N)
(cd "$work" && sipp 127.0.0.1:$port -sf "$ROOT/tests/sipp/call.xml" -m "$CALLS" -l "$CONCURRENT" -r "$RATE" \
  -t u1 -i 127.0.0.1 -nostdin -mp 30000 -d "$call_ms" -cid_str "bench-%u" \
  -key agent_cmd "$PY $ROOT/tests/clients/rtp_pcap.py send $work/agent.pcap --to" \
  -timeout $((call_ms / 1000 * 4 + 600))s -timeout_error -trace_stat -stf "$work/stat.csv" \
  >"$work/sipp.out" 2>&1) && sipp_ok=1 || { sipp_ok=0; tail -20 "$work/sipp.out" >&2; }
wall=$("$PY" -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$start" "$(date +%s.%N)")
sleep 3
kill -INT $daemon; wait $daemon 2>/dev/null || true
kill $sampler 2>/dev/null || true

"$PY" - "$work" "$CALLS" "$CONCURRENT" "$wall" "$sipp_ok" "$LONG" "$call_ms" <<'PY'
import json, re, sys
work, calls, concurrent, wall, sipp_ok, long, call_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "1", sys.argv[6] == "1", int(sys.argv[7])
ended = [json.loads(l)["summary"] for l in open(f"{work}/events.jsonl") if '"event":"ended"' in l]
audio_s = sum(s["audio_ms"] for s in ended) / 1000
log = [re.sub(r"\x1b\[[0-9;]*m", "", l) for l in open(f"{work}/daemon.log")]
rtp = [dict(re.findall(r"(\w+)=(\d+)", l)) for l in log if "SIPREC session finished" in l]
rtp_sum = lambda k: sum(int(r.get(k, 0)) for r in rtp)
rows = [l.split() for l in open(f"{work}/cpu.txt") if len(l.split()) == 4]
connect, other = float(rows[-1][1]), float(rows[-1][2])
rss = [int(r[3]) for r in rows]
onset = 23.64
delays = sorted(s["first_alert_ms"] / 1000 - onset for s in ended if s.get("first_alert_ms") is not None)
pct = lambda v, q: v[min(len(v) - 1, int(q * len(v)))] if v else None
out = {
    "calls_ended": len(ended), "calls_asked": calls, "concurrent": concurrent, "sipp_ok": sipp_ok,
    "wall_s": round(wall, 1), "call_audio_s": round(audio_s, 1),
    "rtp_packets": rtp_sum("packets"), "rtp_lost": rtp_sum("lost"), "rtp_late": rtp_sum("late"),
    "rtp_queue_full": rtp_sum("queue_full"), "frames_not_taken": rtp_sum("frames_not_taken"),
    "windows_dropped": sum(s["windows_dropped"] for s in ended),
    "cpu_connect_s": connect, "cpu_detection_s": other,
    "connect_ms_per_call_s": round(connect / max(audio_s, 1e-9) * 1000, 3),
    "detection_ms_per_call_s": round(other / max(audio_s, 1e-9) * 1000, 3),
    "rss_kb_first_last_max": [rss[len(rss) // 10] if rss else None, rss[-1] if rss else None, max(rss) if rss else None],
}
if long:
    # The session lasts call_ms from the answer to sipp's BYE, the caller talking throughout.
    out["call_time_vs_session_time"] = round(audio_s / (call_ms / 1000), 4)
    out["rss_kb_by_minute"] = [int(r[3]) for r in rows[::60]]
else:
    out["clones_alerted"] = len(delays)
    out["alert_delay_after_onset_p50_p95_s"] = [pct(delays, 0.5), pct(delays, 0.95)]
print(json.dumps(out))
PY
