#!/usr/bin/env python3
"""A small callguard client in Python (grpcio), independent of the Rust code.

Streams a WAV file (16-bit PCM, any rate, mono or stereo) to callguard as a live call, paced in
real time or as fast as the server allows, subscribes to the call's alerts, and prints each
update and alert as one JSON line.

    callguard_client.py --addr 127.0.0.1:50051 --token "$TOKEN" call.wav [--call-id ID]

The gRPC stubs are generated from proto/callguard/v1/callguard.proto with grpc_tools.protoc
into a temporary folder on each run, so the client always matches the proto it ships with.
Exit status: 0 on success, 1 when the file cannot be streamed (not a 16-bit PCM WAV, or not
readable; checked before anything is sent), 2 when the server refuses the call (the status is
printed).
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import wave

import grpc
from google.protobuf.json_format import MessageToDict

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"


def load_stubs(out_dir):
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
         f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
         str(PROTO_ROOT / "callguard/v1/callguard.proto")],
        check=True,
    )
    sys.path.insert(0, str(out_dir))
    from callguard.v1 import callguard_pb2, callguard_pb2_grpc  # noqa: E402
    return callguard_pb2, callguard_pb2_grpc


# The alert listener and the call stream print from two threads: one whole line at a time.
PRINT_LOCK = threading.Lock()


def emit(kind, message):
    line = json.dumps({kind: MessageToDict(message)})
    with PRINT_LOCK:
        print(line, flush=True)


def check_wav(path):
    """Exits with a clear message unless `path` is a 16-bit PCM WAV. Runs before the call is
    opened: an exception inside the request generator would reach the user only as gRPC's
    "Exception iterating requests!"."""
    try:
        with wave.open(str(path), "rb") as w:
            width = w.getsampwidth()
    except OSError as e:
        raise SystemExit(f"{path}: cannot be read ({e.strerror or e})")
    except EOFError:
        raise SystemExit(f"{path}: not a WAV file (it ends inside its header)")
    except wave.Error as e:
        # wave reads only PCM; it names other encodings by their WAV format tag.
        names = {"unknown format: 3": "float", "unknown format: 6": "A-law",
                 "unknown format: 7": "mu-law"}
        what = f"{names[str(e)]} samples" if str(e) in names else str(e)
        raise SystemExit(f"{path}: only 16-bit PCM WAV is supported ({what})")
    if width != 2:
        raise SystemExit(f"{path}: only 16-bit PCM WAV is supported (this one has "
                         f"{8 * width}-bit samples)")


def frames(pb, path, call_id, realtime, caller_channel):
    with wave.open(str(path), "rb") as w:
        rate, channels = w.getframerate(), w.getnchannels()
        open_msg = pb.CallOpen(call_id=call_id, codec=pb.CODEC_PCM16LE, sample_rate=rate,
                               channels=channels,
                               metadata=pb.CallMetadata(ani="+15550100", agent="python-client"))
        if caller_channel is not None:
            open_msg.caller_channel = caller_channel
        yield pb.AudioFrame(open=open_msg)
        per_frame = rate // 50  # 20 ms
        seq = 0
        start = time.monotonic()
        while True:
            data = w.readframes(per_frame)
            if not data:
                break
            if realtime:
                time.sleep(max(0.0, start + seq * 0.02 - time.monotonic()))
            yield pb.AudioFrame(audio=pb.AudioChunk(sequence=seq, data=data))
            seq += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wav", type=pathlib.Path)
    ap.add_argument("--addr", default="127.0.0.1:50051")
    ap.add_argument("--token", required=True)
    ap.add_argument("--call-id", default="python-call")
    ap.add_argument("--caller-channel", type=int)
    ap.add_argument("--realtime", action="store_true", help="pace the audio in real time")
    ap.add_argument("--wait-alerts", type=float, default=10.0,
                    help="seconds to wait for the call's alerts on StreamAlerts after it ends")
    args = ap.parse_args()
    check_wav(args.wav)

    with tempfile.TemporaryDirectory() as stubs:
        pb, pb_grpc = load_stubs(stubs)
        channel = grpc.insecure_channel(args.addr)
        stub = pb_grpc.CallGuardStub(channel)
        auth = [("authorization", f"Bearer {args.token}")]

        # Subscribe first (replaying the whole log) so the call's alerts are seen live.
        alerts = []
        subscription = stub.StreamAlerts(
            pb.AlertSubscription(call_id=args.call_id, after_sequence=0), metadata=auth)

        def listen():
            try:
                for event in subscription:
                    if event.HasField("alert"):
                        alerts.append(event.alert)
                        emit("alert", event.alert)
            except grpc.RpcError:
                pass  # cancelled below

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()

        summary = None
        try:
            for update in stub.StreamAudio(
                    frames(pb, args.wav, args.call_id, args.realtime, args.caller_channel),
                    metadata=auth):
                emit("update", update)
                if update.HasField("ended"):
                    summary = update.ended
        except grpc.RpcError as e:
            with PRINT_LOCK:
                print(json.dumps({"error": e.code().name, "details": e.details()}), flush=True)
            subscription.cancel()
            return 2
        if summary is not None and summary.alerts > 0:
            deadline = time.monotonic() + args.wait_alerts
            while len(alerts) < summary.alerts and time.monotonic() < deadline:
                time.sleep(0.05)
        subscription.cancel()
        listener.join(2)
        return 0


if __name__ == "__main__":
    sys.exit(main())
