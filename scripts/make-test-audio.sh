#!/usr/bin/env bash
# Builds the audio that the demo and the tests use, from Debian packages only (no ../shared):
#   genuine:   Asterisk prompts (one human voice, 8 kHz), joined into short phrases
#   synthetic: espeak-ng and flite voices saying call-center sentences
#   switch:    a genuine opening followed by a synthetic voice (a clone taking over mid-call)
#   stereo:    caller on the right channel, agent (synthetic) on the left
# Output in .deps/audio/; existing files are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.deps/audio
# Bump when the recipe changes, so existing copies are rebuilt.
VERSION=4
[ "$(cat "$OUT/VERSION" 2>/dev/null)" = "$VERSION" ] || rm -rf "$OUT"
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# sox dithers by default when it reduces precision, with random noise: -D keeps output
# byte-identical from run to run, which the golden tests rely on.
sox() { command sox -D "$@"; }
SOUNDS=/usr/share/asterisk/sounds/en

make() { [ -f "$1" ] || { "${@:2}"; }; }

# Genuine: a few prompts each, 8 kHz mono 16-bit.
join_prompts() {
  local out=$1; shift
  local files=()
  for p in "$@"; do files+=("$SOUNDS/$p.wav"); done
  sox "${files[@]}" "$out"
}
make "$OUT/genuine_1.wav" join_prompts "$OUT/genuine_1.wav" vm-intro vm-theperson vm-isunavail vm-goodbye
make "$OUT/genuine_2.wav" join_prompts "$OUT/genuine_2.wav" conf-onlyperson conf-waitforleader agent-loginok
make "$OUT/genuine_3.wav" join_prompts "$OUT/genuine_3.wav" vm-options vm-instructions

# Synthetic: espeak-ng (formant) and flite (diphone/clustergen) voices.
S1="Hello, this is your director. I need you to wire forty thousand dollars to our new supplier today, and please do not tell anyone about it."
S2="Hi, I am locked out of my account. Can you reset my password and read me the verification code that you just sent?"
make "$OUT/synthetic_espeak.wav" espeak-ng -v en-us+m3 -s 150 -w "$OUT/synthetic_espeak.wav" "$S1"
make "$OUT/synthetic_flite.wav" flite -voice slt -t "$S2" -o "$OUT/synthetic_flite.wav"

# Telephone versions: 8 kHz G.711 mu-law and A-law WAV.
make "$OUT/synthetic_espeak_ulaw.wav" sox "$OUT/synthetic_espeak.wav" -r 8000 -e u-law "$OUT/synthetic_espeak_ulaw.wav"
make "$OUT/genuine_1_alaw.wav" sox "$OUT/genuine_1.wav" -r 8000 -e a-law "$OUT/genuine_1_alaw.wav"

# A genuine opening, then a synthetic voice: 8 kHz mono.
# Another person than the Asterisk prompts' voice (a radio amateur, codec2-examples, 13.5 s).
make "$OUT/other_person.wav" sox -t raw -r 8000 -e signed -b 16 -c 1 /usr/share/codec2/raw/vk5qi.raw "$OUT/other_person.wav"

if [ ! -f "$OUT/switch.wav" ]; then
  sox "$OUT/synthetic_flite.wav" -r 8000 -c 1 -b 16 "$TMP/tail.wav"
  sox "$OUT/genuine_1.wav" "$OUT/genuine_2.wav" "$OUT/genuine_3.wav" "$TMP/tail.wav" "$OUT/switch.wav"
fi

# Stereo call: agent (synthetic voice) left, caller (genuine) right, 8 kHz.
if [ ! -f "$OUT/stereo_call.wav" ]; then
  sox "$OUT/synthetic_espeak.wav" -r 8000 -c 1 -b 16 "$TMP/agent.wav"
  sox "$OUT/genuine_1.wav" "$OUT/genuine_2.wav" "$TMP/caller.wav"
  sox -M "$TMP/agent.wav" "$TMP/caller.wav" "$OUT/stereo_call.wav"
fi
# Transcription: real recordings with known text (Asterisk's prompt list), joined with pauses,
# as 16-bit PCM and through G.711 mu-law; the reference text beside them.
PROMPTS=(demo-echotest tt-allbusy ss-noservice priv-introsaved queue-youarenext vm-mismatch
  vm-invalid-password auth-incorrect agent-user pbx-invalidpark privacy-unident conf-onlyperson
  conf-waitforleader vm-intro vm-instructions followme/status)
if [ ! -f "$OUT/prompts.txt" ]; then
  sox -n -r 8000 -c 1 -b 16 "$TMP/pause.wav" trim 0 0.6
  parts=()
  for p in "${PROMPTS[@]}"; do parts+=("$SOUNDS/$p.wav" "$TMP/pause.wav"); done
  sox "${parts[@]}" "$OUT/prompts.wav"
  sox "$OUT/prompts.wav" -e u-law "$OUT/prompts_ulaw.wav"
  for p in "${PROMPTS[@]}"; do
    zcat /usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz | grep -m1 "^$p: " | cut -d' ' -f2-
  done | sed 's/([^)]*)//g' > "$TMP/prompts.txt"
  mv "$TMP/prompts.txt" "$OUT/prompts.txt"
fi

# A voice-clone request, and one that reads out a card number digit by digit (redaction).
make "$OUT/request.wav" espeak-ng -v en-us -s 140 -w "$OUT/request.wav" "Please wire the money today, and don't tell anyone."
make "$OUT/card.wav" espeak-ng -v en-us -s 130 -w "$OUT/card.wav" \
  "My card number is four one one one, one one one one, one one one one, one one one one. Thank you."
# Hostile input for transcription (whisper's repetition loops): letters spelled one by one,
# long silence, DTMF digits and music on hold (a sox melody of sines with a little noise).
make "$OUT/letters.wav" espeak-ng -v en-us -s 120 -w "$OUT/letters.wav" \
  "My name is spelled S, M, I, T, H. My reference is A, A, A, B, B, B, Q, Q, X. Thank you."
make "$OUT/silence.wav" sox -n -r 8000 -c 1 -b 16 "$OUT/silence.wav" trim 0 20
dtmf_tone() { sox -n -r 8000 -c 1 -b 16 "$1" synth 0.2 sine "$2" sine "$3" remix - gain -6 pad 0 0.15; }
dtmf() {
  local parts=() i=0
  for pair in 697:1209 697:1336 770:1209 852:1477 941:1336 697:1209 697:1209 697:1209 \
              770:1336 770:1336 852:1209 941:1336 697:1336 697:1336 697:1336 697:1336; do
    dtmf_tone "$TMP/dtmf$i.wav" "${pair%:*}" "${pair#*:}"; parts+=("$TMP/dtmf$i.wav"); i=$((i + 1))
  done
  sox "${parts[@]}" "$1"
}
make "$OUT/dtmf.wav" dtmf "$OUT/dtmf.wav"
hold_music() {
  local parts=() i=0
  for f in 262 330 392 523 392 330 294 349 440 587 440 349 262 330 392 523 392 330 294 349; do
    sox -n -r 8000 -c 1 -b 16 "$TMP/note$i.wav" synth 0.6 sine "$f" sine "$((f * 2))" sine "$((f * 3 / 2))" \
      remix - fade 0.02 0.6 0.1 gain -12; parts+=("$TMP/note$i.wav"); i=$((i + 1))
  done
  sox "${parts[@]}" "$TMP/melody.wav"
  sox -n -r 8000 -c 1 -b 16 "$TMP/hiss.wav" synth 12 whitenoise gain -45
  sox -m "$TMP/melody.wav" "$TMP/hiss.wav" "$1" trim 0 12
}
make "$OUT/hold_music.wav" hold_music "$OUT/hold_music.wav"
echo "$VERSION" > "$OUT/VERSION"
