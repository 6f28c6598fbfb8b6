"""Plays WAV files into an AudioHook server the way Genesys Cloud's AudioHook Monitor does.

Written from Genesys's AudioHook protocol documentation (version 2), not from callguard's code:

- the upgrade request carries Audiohook-Organization-Id, Audiohook-Correlation-Id,
  Audiohook-Session-Id and X-API-KEY, signed as an HTTP Message Signature (RFC 9421):
  Signature-Input `sig1=("@request-target" "@authority" "audiohook-organization-id"
  "audiohook-session-id" "audiohook-correlation-id" "x-api-key");keyid=API_KEY;nonce=..;
  alg="hmac-sha256";created=..;expires=..` and Signature `sig1=:BASE64:`, HMAC-SHA256 keyed with
  the base64-decoded client secret over the signature base;
- JSON text messages carry version "2", id (the session id), type, seq (counting from 1),
  serverseq (the last server seq seen), position (ISO 8601 duration of audio sent) and
  parameters; the client sends `open` (offering PCMU 8 kHz stereo external+internal, and mono
  external or internal), then binary audio frames (PCMU, channels interleaved in the order
  `opened` chose), `ping` every few seconds, and `close` at the end; the server answers
  `opened`, `pong`, `closed`, and may send `event`, `pause`/`resume` or `disconnect` (which
  the client answers with `close`).

Prints one JSON object per line: each server message (`received`), `rejected` (a refused
upgrade) and `closed` (the WebSocket's close code). `--scenario` sends a broken session.

    .deps/venv/bin/python tests/clients/audiohook_client.py --url ws://127.0.0.1:8443/audiohook/bank-a \
        --api-key "$KEY" --client-secret "$SECRET" --external .deps/audio/synthetic_espeak.wav
"""

import argparse
import asyncio
import audioop  # noqa: deprecated in 3.11, still the reference G.711 encoder there
import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.parse
import uuid
import warnings
import wave

warnings.filterwarnings("ignore", category=DeprecationWarning)

from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

RATE = 8000


def emit(**obj):
    print(json.dumps(obj), flush=True)


def signed_headers(url, api_key, secret, org, session, correlation):
    u = urllib.parse.urlsplit(url)
    target = u.path + ("?" + u.query if u.query else "")
    fields = {"audiohook-organization-id": org, "audiohook-session-id": session,
              "audiohook-correlation-id": correlation, "x-api-key": api_key}
    now = int(time.time())
    components = ["@request-target", "@authority", *fields]
    params = ("(" + " ".join(f'"{c}"' for c in components) + ")"
              + f';keyid="{api_key}";nonce="{base64.b64encode(os.urandom(16)).decode()}"'
              + f';alg="hmac-sha256";created={now};expires={now + 60}')
    values = {"@request-target": target, "@authority": u.netloc, **fields}
    base = "".join(f'"{c}": {values[c]}\n' for c in components) + f'"@signature-params": {params}'
    digest = hmac.new(base64.b64decode(secret), base.encode(), hashlib.sha256).digest()
    return {
        "Audiohook-Organization-Id": org, "Audiohook-Correlation-Id": correlation,
        "Audiohook-Session-Id": session, "X-API-KEY": api_key,
        "Signature-Input": f"sig1={params}",
        "Signature": f"sig1=:{base64.b64encode(digest).decode()}:",
    }


def pcm_8k(paths):
    pcm = b""
    for p in paths:
        with wave.open(p) as w:
            data = w.readframes(w.getnframes())
            width, rate, channels = w.getsampwidth(), w.getframerate(), w.getnchannels()
        if channels == 2:
            data = audioop.tomono(data, width, 0.5, 0.5)
        if width != 2:
            data = audioop.lin2lin(data, width, 2)
        if rate != RATE:
            data, _ = audioop.ratecv(data, 2, 1, rate, RATE, None)
        pcm += data
    return pcm


def duration(samples):
    return f"PT{samples / RATE:.3f}S"


class Session:
    def __init__(self, ws, session_id):
        self.ws, self.id = ws, session_id
        self.seq = 0
        self.serverseq = 0
        self.samples = 0  # per channel
        self.received = asyncio.Queue()

    async def send(self, type_, parameters=None, seq=None, position=None):
        self.seq = seq if seq is not None else self.seq + 1
        await self.ws.send(json.dumps({
            "version": "2", "id": self.id, "type": type_, "seq": self.seq,
            "serverseq": self.serverseq,
            "position": position if position is not None else duration(self.samples),
            "parameters": parameters or {},
        }))

    async def read(self):
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                self.serverseq = msg.get("seq", self.serverseq)
                emit(event="received", message=msg)
                await self.received.put(msg)
        except ConnectionClosed:
            pass
        await self.received.put(None)

    async def wait_for(self, *types, timeout=60):
        while True:
            msg = await asyncio.wait_for(self.received.get(), timeout)
            if msg is None or msg["type"] in types:
                return msg

    async def audio(self, frame, channels):
        await self.ws.send(frame)
        self.samples += len(frame) // channels


def open_parameters(args, org):
    return {
        "organizationId": org, "conversationId": args.conversation_id,
        "participant": {"id": str(uuid.uuid4()), "ani": args.ani, "aniName": "Test Caller",
                        "dnis": args.dnis},
        "media": [
            {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000},
            {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000},
            {"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": 8000},
        ],
        "language": "en-US",
    }


async def stream_audio(s, chosen, args, stop_after=None):
    """Frames of --frame-ms, channels as chosen, paced in (scaled) real time, pings between."""
    tracks = {"external": pcm_8k(args.external), "internal": pcm_8k(args.internal)}
    n = max(len(t) for t in tracks.values()) // 2
    step = RATE * args.frame_ms // 1000
    t0 = time.monotonic()
    last_ping = 0
    for i, start in enumerate(range(0, n, step)):
        if stop_after is not None and i >= stop_after:
            return
        chans = []
        for c in chosen:
            pcm = tracks[c][2 * start:2 * (start + step)].ljust(2 * step, b"\0")
            chans.append(audioop.lin2ulaw(pcm, 2))
        frame = bytes(b for samples in zip(*chans) for b in samples)
        await s.audio(frame, len(chosen))
        if s.samples - last_ping >= 5 * RATE:
            last_ping = s.samples
            await s.send("ping", {"rtt": "PT0.01S"})
        delay = t0 + (i + 1) * args.frame_ms / 1000 / args.speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def run(args):
    org = args.organization_id
    session_id = args.session_id
    secret = args.client_secret if args.scenario != "bad-signature" else base64.b64encode(b"wrong").decode()
    headers = signed_headers(args.url, args.api_key, secret, org, session_id, str(uuid.uuid4()))
    if args.scenario == "missing-header":
        del headers["Audiohook-Session-Id"]
    try:
        ws = await connect(args.url, additional_headers=headers, max_size=None, open_timeout=30,
                           close_timeout=30, ping_interval=None)
    except InvalidStatus as e:
        emit(event="rejected", status=e.response.status_code,
             body=e.response.body.decode(errors="replace"))
        return 0
    s = Session(ws, session_id)
    reader = asyncio.create_task(s.read())
    sc = args.scenario
    try:
        if sc == "audio-before-open":
            await ws.send(b"\xff" * 320)
        elif sc == "huge-frame":
            await ws.send(json.dumps({"type": "ping", "pad": "x" * (10 << 20)}))
        elif sc == "out-of-order-seq":
            await s.send("open", open_parameters(args, org), seq=2)
        else:
            await s.send("open", open_parameters(args, org))
            opened = await s.wait_for("opened", "disconnect")
            if opened is None or opened["type"] != "opened":
                raise RuntimeError(f"no opened: {opened}")
            chosen = opened["parameters"]["media"][0]["channels"]
            if sc == "unknown-type":
                await s.send("shout", {})
            elif sc == "ping-storm":
                for _ in range(100):
                    await s.send("ping", {})
            elif sc == "gap":
                await stream_audio(s, chosen, args, stop_after=10)
                # One second of audio never sent: the next position says so.
                s.samples += RATE
                await stream_audio(s, chosen, args, stop_after=10)
            elif sc == "drop":
                await stream_audio(s, chosen, args, stop_after=20)
                await asyncio.sleep(2.0)
                ws.transport.abort()
                emit(event="dropped")
                return 0
            elif sc == "close-mid-audio":
                await stream_audio(s, chosen, args, stop_after=20)
                await s.send("close", {"reason": "end"})
                # Audio still in flight after close is not taken.
                await ws.send(b"\xff" * 1600)
            else:
                await stream_audio(s, chosen, args)
            if sc not in ("unknown-type", "ping-storm", "close-mid-audio"):
                await s.send("close", {"reason": "end"})
        # The server ends the session: a disconnect is answered with close; closed ends it.
        while True:
            msg = await s.wait_for("disconnect", "closed", timeout=args.close_wait)
            if msg is None or msg["type"] == "closed":
                break
            await s.send("close", {"reason": "disconnect"})
        await ws.close()
    except ConnectionClosed:
        pass
    except asyncio.TimeoutError:
        emit(event="timeout")
        return 1
    await reader
    emit(event="closed", code=ws.close_code, reason=ws.close_reason)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="the integration's Connection URI")
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--client-secret", required=True, help="base64, as Genesys shows it")
    ap.add_argument("--external", nargs="*", default=[], help="WAVs the customer says")
    ap.add_argument("--internal", nargs="*", default=[], help="WAVs the agent says")
    ap.add_argument("--frame-ms", type=int, default=100, help="audio per binary frame, 20-200")
    ap.add_argument("--speed", type=float, default=1.0, help="1 = real time")
    ap.add_argument("--organization-id", default="d7934305-0972-4844-938e-9060eef73d05")
    ap.add_argument("--session-id", default=str(uuid.uuid4()))
    ap.add_argument("--conversation-id", default=str(uuid.uuid4()))
    ap.add_argument("--ani", default="+15550100")
    ap.add_argument("--dnis", default="+18005550199")
    ap.add_argument("--close-wait", type=float, default=120.0)
    ap.add_argument("--scenario", default="call",
                    choices=["call", "bad-signature", "missing-header", "audio-before-open",
                             "huge-frame", "out-of-order-seq", "unknown-type", "ping-storm",
                             "gap", "drop", "close-mid-audio"])
    args = ap.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
