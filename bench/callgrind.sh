#!/usr/bin/env bash
# Instructions per call-second of the detection path, counted by callgrind: a figure that does not
# move with the machine's load, unlike the load bench's CPU time. `callguard scan` screens a short
# and a long recording of the same speech (8 kHz, the test calls joined; transcription off); the
# difference of the two runs' instruction counts over the difference of their lengths is what one
# more second of call costs, start-up and model loading cancelled out. Per configuration:
# the shipped one (cascade on, 500 ms hop), the cascade off, and both at a 1 s hop. Inclusive
# counts of the detector (the cascade's scoring), the VAD and the resampler say where it goes.
#
#   bench/callgrind.sh            # writes bench/callgrind.json (about 10 minutes)
#
# Needs scripts/setup.sh; installs valgrind if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { apt-get update -q && apt-get install -y -q valgrind; }
cargo build --release -q --bin callguard
bin=target/release/callguard
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

a=.deps/audio
sox "$a/genuine_1.wav" "$a/genuine_2.wav" "$a/genuine_3.wav" "$a/genuine_1.wav" "$dir/all.wav"
short_s=8
long_s=38
sox "$dir/all.wav" "$dir/short.wav" trim 0 "$short_s"
sox "$dir/all.wav" "$dir/long.wav" trim 0 "$long_s"

# config.toml with transcription off, then each variant's keys.
base() {
  sed -e '/^\[transcribe\]/,/^\[/ s/^enabled = true/enabled = false/' config.toml
}
variant() { # NAME CASCADE HOP_MS
  base | sed -e "/^\[detector\]/,/^\[/ s/^cascade = .*/cascade = $2/" \
    -e "/^\[windows\]/,/^\[/ s/^hop_ms = .*/hop_ms = $3/" >"$dir/$1.toml"
  if [ "$3" = 1000 ]; then # the fusion still averages 2 s of speech, as the load bench does
    sed -i -e '/^\[verdict\]/,/^\[/ s/^smoothing_windows = .*/smoothing_windows = 2/' "$dir/$1.toml"
  fi
}

# inclusive Ir of the functions matching each pattern, from one callgrind output
inclusive() { # FILE PATTERN
  callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null |
    awk -v pat="$2" '$0 ~ pat { gsub(",", "", $1); if ($1 + 0 > best) best = $1 + 0 } END { print best + 0 }'
}

count() { # CONFIG FILE -> "TOTAL DETECTOR VAD RESAMPLE"
  local out="$dir/cg.out"
  rm -f "$out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --config "$1" scan "$2" >/dev/null 2>"$dir/vg.log" ||
    { tail -20 "$dir/vg.log" >&2; return 1; }
  local total
  total=$(awk '/^(summary|totals):/ { print $2; exit }' "$out")
  echo "$total $(inclusive "$out" 'Scorer::score') $(inclusive "$out" 'SileroVad::run') $(inclusive "$out" 'Resampler::process')"
}

json="{"
sep=""
for spec in "shipped true 500" "no_cascade false 500" "shipped_hop1000 true 1000" "no_cascade_hop1000 false 1000"; do
  set -- $spec
  variant "$1" "$2" "$3"
  read -r t0 d0 v0 r0 < <(count "$dir/$1.toml" "$dir/short.wav")
  read -r t1 d1 v1 r1 < <(count "$dir/$1.toml" "$dir/long.wav")
  secs=$((long_s - short_s))
  line=$(awk -v t0="$t0" -v t1="$t1" -v d0="$d0" -v d1="$d1" -v v0="$v0" -v v1="$v1" -v r0="$r0" -v r1="$r1" -v s="$secs" \
    'BEGIN { printf "{\"cascade\": %s, \"hop_ms\": %s, \"instructions_per_call_second\": %.0f, \"detector\": %.0f, \"vad\": %.0f, \"resample\": %.0f}",
             "'"$2"'", "'"$3"'", (t1 - t0) / s, (d1 - d0) / s, (v1 - v0) / s, (r1 - r0) / s }')
  echo "$1: $line" >&2
  json="$json$sep\"$1\": $line"
  sep=", "
done
json="$json, \"audio\": \"the test calls joined, 8 kHz; ${short_s} s and ${long_s} s screened by callguard scan\", \"model\": \"$(awk -F'"' '/"version"/ { print $4; exit }' models/detector.json)\"}"
echo "$json" | python3 -m json.tool >bench/callgrind.json
cat bench/callgrind.json
