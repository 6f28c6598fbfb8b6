"""Plays WAV files into an AudioSocket server the way Asterisk does.

Written from Asterisk's AudioSocket protocol description (res_audiosocket, app_audiosocket), not
from callguard's code. Every message is a 1-byte kind, a 2-byte big-endian payload length and
the payload:

    0x00  hang up (no payload)
    0x01  the call's UUID (16 bytes), sent first
    0x03  a DTMF digit (1 ASCII byte)
    0x10  audio: signed linear 16-bit little-endian, 8 kHz mono (20 ms = 320 bytes)
    0xff  an error (optional code byte)

Asterisk sends the UUID, then audio every 20 ms, then a hangup (or just closes). Prints one
JSON object per line: each message the server sends (`received` with kind and payload in hex)
and `closed` when the server has closed the connection. `--scenario` sends a broken stream.

    .deps/venv/bin/python tests/clients/audiosocket_client.py --addr 127.0.0.1:9092 \
        --uuid 40325ec2-5efd-4bd3-805f-53576e581d13 .deps/audio/synthetic_espeak.wav
"""

import argparse
import audioop  # noqa: deprecated in 3.11, still there
import json
import socket
import struct
import sys
import time
import uuid
import warnings
import wave

warnings.filterwarnings("ignore", category=DeprecationWarning)

HANGUP, UUID, DTMF, AUDIO, ERROR = 0x00, 0x01, 0x03, 0x10, 0xFF
FRAME_BYTES = 320  # 20 ms at 8 kHz, 16-bit


def emit(**obj):
    print(json.dumps(obj), flush=True)


def message(kind, payload=b""):
    return struct.pack(">BH", kind, len(payload)) + payload


def slin_8k(paths):
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
    return pcm  # WAV PCM is little-endian already


def read_replies(sock, timeout):
    """Reads the server's messages until it closes the connection."""
    sock.settimeout(timeout)
    buf = b""
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                break
            buf += data
            while len(buf) >= 3:
                kind, length = struct.unpack(">BH", buf[:3])
                if len(buf) < 3 + length:
                    break
                emit(event="received", kind=kind, payload=buf[3:3 + length].hex())
                buf = buf[3 + length:]
    except socket.timeout:
        emit(event="timeout")
        return 1
    except ConnectionResetError:
        pass
    emit(event="closed")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wav", nargs="*", help="what the caller says, in order")
    ap.add_argument("--addr", required=True, help="HOST:PORT, as in AudioSocket(UUID,HOST:PORT)")
    ap.add_argument("--uuid", default=str(uuid.uuid4()))
    ap.add_argument("--speed", type=float, default=1.0, help="1 = real time")
    ap.add_argument("--close-wait", type=float, default=120.0)
    ap.add_argument("--scenario", default="call",
                    choices=["call", "audio-before-uuid", "bad-uuid", "truncated", "drop",
                             "odd-frame"])
    args = ap.parse_args()
    host, port = args.addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    silence = b"\x00" * FRAME_BYTES
    s = args.scenario
    if s == "audio-before-uuid":
        sock.sendall(message(AUDIO, silence))
    elif s == "bad-uuid":
        sock.sendall(message(UUID, b"short"))
    else:
        sock.sendall(message(UUID, uuid.UUID(args.uuid).bytes))
        if s == "call":
            pcm = slin_8k(args.wav)
            t0 = time.monotonic()
            try:
                for i in range(0, len(pcm), FRAME_BYTES):
                    sock.sendall(message(AUDIO, pcm[i:i + FRAME_BYTES].ljust(FRAME_BYTES, b"\0")))
                    delay = t0 + (i // FRAME_BYTES + 1) * 0.020 / args.speed - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                sock.sendall(message(DTMF, b"1"))
                sock.sendall(message(HANGUP))
            except (BrokenPipeError, ConnectionResetError):
                # The server closed the call (as Asterisk sees a hangup): read what it said.
                emit(event="send_failed")
        else:
            for i in range(100):
                if s == "odd-frame" and i == 50:
                    sock.sendall(message(AUDIO, silence + b"\0"))
                    sock.sendall(message(0x42, b"a kind Asterisk may add"))
                else:
                    sock.sendall(message(AUDIO, silence))
            if s == "truncated":
                sock.sendall(message(AUDIO, silence)[:100])
                sock.shutdown(socket.SHUT_WR)
            elif s == "drop":
                # Gone without a hangup: reset the connection (once the server has had time
                # to read what was sent).
                time.sleep(2.0)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
                emit(event="dropped")
                return 0
            else:
                sock.sendall(message(HANGUP))
    code = read_replies(sock, args.close_wait)
    sock.close()
    sys.exit(code)


if __name__ == "__main__":
    main()
