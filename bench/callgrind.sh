#!/usr/bin/env bash
# Instructions per call-second of the detection path, counted by callgrind: a figure that does not
# move with the machine's load, unlike the load bench's CPU time. `callguard scan` screens 30 s of
# speech (8 kHz, the test calls joined; transcription off) once per configuration: the shipped one
# (cascade on, 500 ms hop), the cascade off, and both at a 1 s hop. Start-up (model loading) is
# left out by counting only the functions that run per call, inclusively: the detector workers
# (`detect::pool::worker`: the cascade's scoring), the thread that drives the call
# (`pipeline::engine::drive`: decoding, resampling, the VAD and windowing) and fusion
# (`pipeline::engine::fuse`); the VAD (`SileroVad::run`) and the detector (`Scorer::score`) are
# also given alone.
#
#   bench/callgrind.sh            # writes bench/callgrind.json (about 8 minutes per configuration)
#   bench/callgrind.sh shipped no_cascade     # only these configurations
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
seconds=30
sox "$a/genuine_1.wav" "$a/genuine_2.wav" "$a/genuine_3.wav" "$dir/all.wav"
sox "$dir/all.wav" "$dir/call.wav" trim 0 "$seconds"

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
    awk -v pat="$2" '$0 ~ pat { gsub(",", "", $1); if ($1 + 0 > best) best = $1 + 0 } END { printf "%.0f\n", best }'
}

count() { # CONFIG FILE -> "PATH DETECTOR VAD"
  local out="$dir/cg.out"
  rm -f "$out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --config "$1" scan "$2" >/dev/null 2>"$dir/vg.log" ||
    { tail -20 "$dir/vg.log" >&2; return 1; }
  local worker drive fuse
  worker=$(inclusive "$out" 'detect::pool::worker')
  drive=$(inclusive "$out" 'pipeline::engine::drive')
  fuse=$(inclusive "$out" 'pipeline::engine::fuse[^a-z_]')
  echo "$((worker + drive + fuse)) $(inclusive "$out" 'cascade::Scorer::score') $(inclusive "$out" 'SileroVad::run')"
}

json="{"
sep=""
wanted=" ${*:-shipped no_cascade shipped_hop1000 no_cascade_hop1000} "
for spec in "shipped true 500" "no_cascade false 500" "shipped_hop1000 true 1000" "no_cascade_hop1000 false 1000"; do
  set -- $spec
  [[ "$wanted" == *" $1 "* ]] || continue
  variant "$1" "$2" "$3"
  read -r path det vad < <(count "$dir/$1.toml" "$dir/call.wav")
  line=$(awk -v p="$path" -v d="$det" -v v="$vad" -v s="$seconds" \
    'BEGIN { printf "{\"cascade\": %s, \"hop_ms\": %s, \"instructions_per_call_second\": %.0f, \"detector\": %.0f, \"vad\": %.0f}",
             "'"$2"'", "'"$3"'", p / s, d / s, v / s }')
  echo "$1: $line" >&2
  json="$json$sep\"$1\": $line"
  sep=", "
done
json="$json, \"audio\": \"the test calls joined: ${seconds} s at 8 kHz (G.711 class), screened by callguard scan\", \"model\": \"$(awk -F'"' '/"version"/ { print $4; exit }' models/detector.json)\"}"
echo "$json" | python3 -m json.tool >bench/callgrind.json
cat bench/callgrind.json
