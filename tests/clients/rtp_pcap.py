#!/usr/bin/env python3
"""G.711, G.722 and Opus RTP for the SIPREC tests, written from RFC 3550 / RFC 3551 / RFC 7587
(independent of the Rust code; G.722 is encoded by the `G722` package, sippy's libg722, and Opus by
`opuslib` over the system's libopus).

    rtp_pcap.py make WAV... --out caller.pcap [--law mu|a|g722|opus] [--loss 0.02] [--reorder 0.02] [--seed 1]
                [--start S] [--seconds S] [--rtcp-every N]
    rtp_pcap.py send PCAP --to HOST:PORT          # plays a pcap's RTP in real time (the agent leg)

`make`: the WAVs (any rate, mono 16-bit) joined, cut to `--start`/`--seconds`, resampled to 8 kHz
and encoded mu-law or A-law (or to 16 kHz and G.722 at 64 kbit/s, payload type 9 on the 8 kHz
RTP clock; or to 48 kHz and Opus, 20 ms frames, payload type 111 on its 48 kHz clock), and cut
into 20 ms RTP packets (160 bytes, sequence and timestamp running from random
starts, one SSRC) written as a pcap of Ethernet/IPv4/UDP frames 20 ms apart, for sipp's
`play_pcap_audio` (which rewrites the addresses). `--loss` drops that share of packets,
`--reorder` swaps that share with their successor, as a lossy network would. `--rtcp-every N`
follows every Nth packet with an RTCP sender report muxed on the RTP port (RFC 5761) and a
3-byte runt datagram. Prints one JSON line: packets, dropped, swapped, rtcp, seconds.
"""

import argparse
import json
import random
import socket
import struct
import sys
import time
import wave

import numpy as np

PTIME = 0.02
RATE = 8000


def read_wav(path, want=RATE):
    with wave.open(path, "rb") as w:
        assert w.getsampwidth() == 2, f"{path}: 16-bit PCM only"
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
        x = x.reshape(-1, w.getnchannels()).mean(axis=1)
        rate = w.getframerate()
    if rate != want:
        n = int(round(len(x) * want / rate))
        x = np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x)
    return np.clip(x, -32768, 32767)


def mulaw(x):
    # G.711 mu-law (ITU-T G.711 table, as the segment/quantisation formula).
    bias, clip = 0x84, 32635
    s = np.clip(x.astype(np.int32), -clip, clip)
    sign = np.where(s < 0, 0x80, 0)
    s = np.abs(s) + bias
    exp = np.clip(np.floor(np.log2(s)).astype(np.int32) - 7, 0, 7)
    mant = (s >> (exp + 3)) & 0x0F
    return (~(sign | (exp << 4) | mant) & 0xFF).astype(np.uint8)


def alaw(x):
    s = np.clip(x.astype(np.int32), -32768, 32767) >> 3
    sign = np.where(s >= 0, 0x80, 0)
    a = np.where(s >= 0, s, -s - 1)
    a = np.minimum(a, 0xFFF)
    exp = np.where(a < 32, 0, np.floor(np.log2(np.maximum(a, 1))).astype(np.int32) - 4)
    mant = np.where(exp == 0, a >> 1, a >> exp) & 0x0F
    return ((sign | (exp << 4) | mant) ^ 0x55).astype(np.uint8)


def checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def frame(payload, src=("10.0.0.1", 20000), dst=("10.0.0.2", 40000)):
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    return eth + ip + udp


def g722(x):
    import G722  # noqa: N813 (the package's name)

    enc = G722.G722(16000, 64000)
    x = x[: len(x) // 320 * 320].astype(np.int16)
    return np.frombuffer(b"".join(enc.encode(x[i:i + 320]) for i in range(0, len(x), 320)), np.uint8)


def opus_frames(x):
    import opuslib

    enc = opuslib.Encoder(48000, 1, "voip")
    x = x[: len(x) // 960 * 960].astype(np.int16)
    return [enc.encode(x[i:i + 960].tobytes(), 960) for i in range(0, len(x), 960)]


def make(args):
    rng = random.Random(args.seed)
    rate = {"g722": 16000, "opus": 48000}.get(args.law, RATE)
    x = np.concatenate([read_wav(p, rate) for p in args.wavs])
    x = x[int(args.start * rate):][: int(args.seconds * rate) if args.seconds else None]
    pt = {"mu": 0, "a": 8, "g722": 9, "opus": 111}[args.law]
    if args.law == "opus":
        frames, ticks = opus_frames(x), 960  # 20 ms on the 48 kHz clock
    else:
        # 160 bytes and 160 ticks of the 8 kHz RTP clock per 20 ms, for G.711 and G.722 alike.
        coded = {"mu": mulaw, "a": alaw, "g722": g722}[args.law](x)
        frames, ticks = [coded[i:i + 160].tobytes() for i in range(0, len(coded) - 159, 160)], 160
    seq, ts, ssrc = rng.randrange(65536), rng.randrange(1 << 32), rng.randrange(1 << 32)
    packets = []
    for k, payload in enumerate(frames):
        header = struct.pack("!BBHII", 0x80, pt | (0x80 if k == 0 else 0), (seq + k) & 0xFFFF,
                             (ts + k * ticks) & 0xFFFFFFFF, ssrc)
        packets.append(header + payload)
    dropped = swapped = 0
    if args.loss:
        kept = []
        for p in packets:
            if rng.random() < args.loss:
                dropped += 1
            else:
                kept.append(p)
        packets = kept
    if args.reorder:
        i = 0
        while i + 1 < len(packets):
            if rng.random() < args.reorder:
                packets[i], packets[i + 1] = packets[i + 1], packets[i]
                swapped += 1
                i += 2
            else:
                i += 1
    records, rtcp = [], 0
    t0 = 1_700_000_000.0
    for k, p in enumerate(packets):
        records.append((t0 + k * PTIME, p))
        if args.rtcp_every and (k + 1) % args.rtcp_every == 0:
            # RTCP SR (RFC 3550 6.4.1, no report blocks): V=2, PT=200, length 6 words - 1.
            sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 0, 0, (ts + k * ticks) & 0xFFFFFFFF, k + 1,
                             (k + 1) * 160)
            records += [(t0 + k * PTIME + 0.001, sr), (t0 + k * PTIME + 0.002, b"\x80\xc8\x00")]
            rtcp += 1
    with open(args.out, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for t, p in records:
            fr = frame(p)
            f.write(struct.pack("<IIII", int(t), int(round((t % 1) * 1e6)) % 1_000_000, len(fr), len(fr)))
            f.write(fr)
    print(json.dumps({"packets": len(packets), "dropped": dropped, "swapped": swapped, "rtcp": rtcp,
                      "seconds": round(len(packets) * PTIME, 2)}))


def send(args):
    host, port = args.to.rsplit(":", 1)
    with open(args.pcap, "rb") as f:
        data = f.read()
    off, packets = 24, []
    while off + 16 <= len(data):
        _, _, n, _ = struct.unpack("<IIII", data[off:off + 16])
        fr = data[off + 16:off + 16 + n]
        packets.append(fr[14 + 20 + 8:])
        off += 16 + n
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start = time.monotonic()
    for k, p in enumerate(packets):
        delay = start + k * PTIME - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        s.sendto(p, (host, int(port)))
    print(json.dumps({"sent": len(packets)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("wavs", nargs="+")
    m.add_argument("--out", required=True)
    m.add_argument("--law", choices=["mu", "a", "g722", "opus"], default="mu")
    m.add_argument("--start", type=float, default=0.0, help="seconds of the joined WAVs skipped")
    m.add_argument("--seconds", type=float, default=0.0, help="seconds kept (0: all)")
    m.add_argument("--rtcp-every", type=int, default=0)
    m.add_argument("--loss", type=float, default=0.0)
    m.add_argument("--reorder", type=float, default=0.0)
    m.add_argument("--seed", type=int, default=1)
    s = sub.add_parser("send")
    s.add_argument("pcap")
    s.add_argument("--to", required=True)
    args = ap.parse_args()
    make(args) if args.cmd == "make" else send(args)


if __name__ == "__main__":
    sys.exit(main())
