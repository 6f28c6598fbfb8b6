"""Plays WAV files into a Media Streams WebSocket server the way Twilio does.

Written from Twilio's published documentation (Media Streams "WebSocket Messages", TwiML
<Stream>, and "Webhooks security"), not from callguard's code:

- the upgrade request carries X-Twilio-Signature: base64 of HMAC-SHA1, keyed with the account's
  auth token, over the full URL the stream connects to (a GET, so no parameters follow);
- messages are JSON text: `connected`, `start` (accountSid, streamSid, callSid, tracks,
  customParameters, mediaFormat audio/x-mulaw 8000 Hz mono), `media` per track every 20 ms
  (track, chunk counting from 1 per track, timestamp in ms, base64 of 160 bytes of mu-law),
  `dtmf`, `mark`, and `stop`; `sequenceNumber` counts every message from 1; Twilio writes
  these numbers as strings;
- a two-track stream (`track="both_tracks"`) interleaves `inbound` (the caller) and
  `outbound` (what the caller hears) media.

Prints one JSON object per line: `started`, every message the server sends (`mark`...),
`closed` (the close code and reason), or `rejected` (the HTTP status and body of a refused
upgrade). `--scenario` sends a broken stream instead of a good one, to test the server's
error handling.

    .deps/venv/bin/python tests/clients/twilio_client.py --url ws://127.0.0.1:8080/twilio/bank-a \
        --auth-token "$TWILIO_TOKEN_BANK_A" --inbound .deps/audio/synthetic_espeak.wav
"""

import argparse
import asyncio
import audioop  # noqa: deprecated in 3.11, still the reference G.711 encoder there
import base64
import hashlib
import hmac
import json
import os
import ssl
import sys
import time
import warnings
import wave

warnings.filterwarnings("ignore", category=DeprecationWarning)

from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law


def emit(**obj):
    print(json.dumps(obj), flush=True)


def sign(auth_token, url):
    digest = hmac.new(auth_token.encode(), url.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def mulaw_8k(paths):
    """The files, one after the other, as 8 kHz mono mu-law."""
    pcm = b""
    for p in paths:
        with wave.open(p) as w:
            data = w.readframes(w.getnframes())
            width, rate, channels = w.getsampwidth(), w.getframerate(), w.getnchannels()
        if channels == 2:
            data = audioop.tomono(data, width, 0.5, 0.5)
        if width != 2:
            data = audioop.lin2lin(data, width, 2)
        if rate != 8000:
            data, _ = audioop.ratecv(data, 2, 1, rate, 8000, None)
        pcm += data
    return audioop.lin2ulaw(pcm, 2)


def frames(audio, count):
    audio = audio.ljust(count * FRAME_BYTES, b"\xff")  # mu-law silence
    return [audio[i * FRAME_BYTES:(i + 1) * FRAME_BYTES] for i in range(count)]


class Stream:
    """One Media Stream: numbering and message shapes as Twilio sends them."""

    def __init__(self, ws, stream_sid, call_sid, account_sid):
        self.ws, self.stream_sid, self.call_sid, self.account_sid = ws, stream_sid, call_sid, account_sid
        self.seq = 0
        self.chunks = {}

    async def send(self, obj):
        await self.ws.send(json.dumps(obj))

    def next_seq(self):
        self.seq += 1
        return str(self.seq)

    async def connected(self):
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    async def start(self, tracks, params, encoding="audio/x-mulaw", rate=8000):
        await self.send({
            "event": "start", "sequenceNumber": self.next_seq(), "streamSid": self.stream_sid,
            "start": {
                "accountSid": self.account_sid, "streamSid": self.stream_sid,
                "callSid": self.call_sid, "tracks": tracks, "customParameters": params,
                "mediaFormat": {"encoding": encoding, "sampleRate": rate, "channels": 1},
            },
        })

    async def media(self, track, payload, timestamp_ms, raw_payload=None):
        chunk = self.chunks.get(track, 0) + 1
        self.chunks[track] = chunk
        await self.send({
            "event": "media", "sequenceNumber": self.next_seq(), "streamSid": self.stream_sid,
            "media": {"track": track, "chunk": str(chunk), "timestamp": str(timestamp_ms),
                      "payload": raw_payload if raw_payload is not None
                      else base64.b64encode(payload).decode()},
        })

    async def dtmf(self, digit):
        await self.send({"event": "dtmf", "streamSid": self.stream_sid,
                         "sequenceNumber": self.next_seq(),
                         "dtmf": {"track": "inbound_track", "digit": digit}})

    async def stop(self):
        await self.send({"event": "stop", "sequenceNumber": self.next_seq(),
                         "streamSid": self.stream_sid,
                         "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})


async def reader(ws):
    try:
        async for message in ws:
            try:
                emit(event="received", message=json.loads(message))
            except (TypeError, ValueError):
                emit(event="received", raw=repr(message)[:200])
    except ConnectionClosed:
        pass


async def play(stream, tracks, audio, speed):
    """Media every 20 ms of stream time (divided by speed), tracks interleaved."""
    count = max(len(a) for a in audio.values()) // FRAME_BYTES + 1
    per_track = {t: frames(audio.get(t, b""), count) for t in tracks}
    t0 = time.monotonic()
    for i in range(count):
        for t in tracks:
            await stream.media(t, per_track[t][i], i * 20)
        due = t0 + (i + 1) * 0.020 / speed
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def run(args):
    url = args.url
    headers = {}
    if args.scenario != "no-signature":
        token = args.auth_token + ("-wrong" if args.scenario == "bad-signature" else "")
        headers["X-Twilio-Signature"] = sign(token, url)
    tls = None
    if url.startswith("wss://"):
        tls = ssl.create_default_context(cafile=args.cafile)
    try:
        ws = await connect(url, additional_headers=headers, max_size=None, open_timeout=30,
                           close_timeout=30, ping_interval=None, ssl=tls)
    except InvalidStatus as e:
        emit(event="rejected", status=e.response.status_code,
             body=e.response.body.decode(errors="replace"))
        return 0
    stream = Stream(ws, args.stream_sid, args.call_sid, "AC" + "0" * 32)
    listening = asyncio.create_task(reader(ws))
    tracks = ["inbound", "outbound"] if args.outbound else ["inbound"]
    params = dict(p.split("=", 1) for p in args.param)
    try:
        await stream.connected()
        s = args.scenario
        if s == "media-before-start":
            await stream.media("inbound", b"\xff" * FRAME_BYTES, 0)
        elif s == "bad-encoding":
            await stream.start(tracks, params, encoding="audio/x-l16", rate=16000)
        elif s == "not-json":
            await stream.start(tracks, params)
            await ws.send("this is not JSON")
        elif s == "huge-frame":
            await stream.start(tracks, params)
            await ws.send(json.dumps({"event": "media", "pad": "x" * (10 << 20)}))
        elif s in ("bad-base64", "drop", "unknown-event"):
            await stream.start(tracks, params)
            silence = b"\xff" * FRAME_BYTES
            for i in range(100):
                if s == "bad-base64" and i == 50:
                    await stream.media("inbound", None, i * 20, raw_payload="%%% not base64 %%%")
                elif s == "unknown-event" and i == 50:
                    await stream.send({"event": "a-future-event", "sequenceNumber": stream.next_seq()})
                else:
                    await stream.media("inbound", silence, i * 20)
            if s == "drop":
                # The TCP connection goes without a stop or a close frame (once the server
                # has had time to read what was sent).
                await asyncio.sleep(2.0)
                ws.transport.abort()
                emit(event="dropped")
                return 0
            await stream.stop()
        else:
            await stream.start(tracks, params)
            emit(event="started", stream_sid=stream.stream_sid, call_sid=stream.call_sid,
                 tracks=tracks)
            audio = {"inbound": mulaw_8k(args.inbound)}
            if args.outbound:
                audio["outbound"] = mulaw_8k(args.outbound)
            await play(stream, tracks, audio, args.speed)
            await stream.dtmf("1")
            await stream.stop()
        # The server ends the call and closes.
        await asyncio.wait_for(ws.wait_closed(), args.close_wait)
    except ConnectionClosed:
        pass
    except asyncio.TimeoutError:
        emit(event="timeout")
        return 1
    await listening
    emit(event="closed", code=ws.close_code, reason=ws.close_reason)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="the <Stream url=...>, e.g. wss://host/twilio/TENANT")
    ap.add_argument("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN", ""))
    ap.add_argument("--inbound", nargs="*", default=[], help="WAVs the caller says, in order")
    ap.add_argument("--outbound", nargs="*", default=[],
                    help="WAVs the caller hears; given: a two-track (both_tracks) stream")
    ap.add_argument("--param", action="append", default=[], help="a <Parameter>, NAME=VALUE")
    ap.add_argument("--speed", type=float, default=1.0, help="1 = real time")
    ap.add_argument("--stream-sid", default="MZ" + os.urandom(16).hex())
    ap.add_argument("--call-sid", default="CA" + os.urandom(16).hex())
    ap.add_argument("--cafile", help="CA to trust for wss:// (default: the system's)")
    ap.add_argument("--close-wait", type=float, default=120.0)
    ap.add_argument("--scenario", default="call",
                    choices=["call", "bad-signature", "no-signature", "media-before-start",
                             "bad-encoding", "not-json", "huge-frame", "bad-base64", "drop",
                             "unknown-event"])
    args = ap.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
