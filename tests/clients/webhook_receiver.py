"""A SOC's webhook receiver, written from callguard's documented contract (README "Alert
delivery to a SOC"), not from its code:

- POST, JSON body `{"type": "alert", "alert": {...}}` or
  `{"type": "acknowledgement", "tenant": ..., "acknowledgement": {"alert_id", "by", "note", "at_ms"}}`;
- `X-Callguard-Timestamp` (Unix seconds) and `X-Callguard-Signature` = `v1=` + hex
  HMAC-SHA256(secret, TIMESTAMP + "." + BODY); a wrong signature or a timestamp more than
  300 s from now is refused with 401;
- `X-Callguard-Delivery` = the alert id, the same on a retry.

`--fail-first N` answers the first N good requests with 503, as a receiver that is still
starting would. Prints `{"listening": PORT}` once bound, then one JSON object per request:
`{"accepted": true, "id", "sequence", "call_id", "kind", "delivery"}` or
`{"accepted": false, "status", "why"}`.

    .deps/venv/bin/python tests/clients/webhook_receiver.py --secret S --port 0 --fail-first 2
"""

import argparse
import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--secret", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--fail-first", type=int, default=0)
    args = ap.parse_args()
    state = {"to_fail": args.fail_first}

    def emit(obj: dict) -> None:
        print(json.dumps(obj), flush=True)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):  # quiet
            pass

        def refuse(self, status: int, why: str) -> None:
            emit({"accepted": False, "status": status, "why": why})
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            ts = self.headers.get("X-Callguard-Timestamp", "")
            sig = self.headers.get("X-Callguard-Signature", "")
            want = "v1=" + hmac.new(args.secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(sig, want):
                return self.refuse(401, "bad signature")
            if not ts.isdigit() or abs(time.time() - int(ts)) > 300:
                return self.refuse(401, "stale timestamp")
            if state["to_fail"] > 0:
                state["to_fail"] -= 1
                return self.refuse(503, "starting up")
            doc = json.loads(body)
            if doc["type"] == "acknowledgement":
                k = doc["acknowledgement"]
                emit({"accepted": True, "type": "acknowledgement", "alert_id": k["alert_id"], "by": k["by"],
                      "note": k["note"], "tenant": doc["tenant"], "delivery": self.headers.get("X-Callguard-Delivery")})
                self.send_response(204)
                self.end_headers()
                return
            a = doc["alert"]
            emit({"accepted": True, "type": doc["type"], "id": a["id"], "sequence": a["sequence"],
                  "call_id": a["call_id"], "kind": a["kind"], "tenant": a["tenant"],
                  "delivery": self.headers.get("X-Callguard-Delivery")})
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    emit({"listening": server.server_address[1]})
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
