#!/usr/bin/env bash
# What a cluster puts on the wire: runs the cluster test (three NATS servers, three nodes in
# network namespaces, haproxy; root needed) with a report of its load phase, and prints the
# figures docs/cluster.md's capacity model uses: NATS messages and bytes per alert and per
# call-minute, and the stream and bucket sizes.
#
#   sudo bench/cluster.sh            # about 2 min; writes bench/cluster.json
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nats-server >/dev/null && command -v haproxy >/dev/null || scripts/setup.sh >&2
CALLGUARD_CLUSTER_REPORT=$PWD/bench/cluster.json cargo test --quiet --test cluster >&2
python3 - bench/cluster.json <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
minutes = r["call_audio_ms"] / 60000
def total(key, which):
    return sum(v[key] for v in r[which] if v)
d = {k: total(k, "varz") - total(k, "varz_before") for k in ("in_msgs", "in_bytes", "out_msgs", "out_bytes")}
writes = sum(n["calls_written"] for n in r["nodes"] if n)
print(f"load phase: {minutes:.2f} min of call audio over 6 calls, {r['alerts']} alerts")
print(f"NATS in (clients and routes, 3 servers): {d['in_msgs']} msgs, {d['in_bytes']} bytes = {d['in_bytes'] / minutes:.0f} bytes per call-minute")
print(f"NATS out: {d['out_msgs']} msgs, {d['out_bytes']} bytes = {d['out_bytes'] / minutes:.0f} bytes per call-minute")
print(f"call-bucket writes since start: {writes}")
for acct in (r["jsz"] or {}).get("account_details", []):
    for s in acct.get("stream_detail", []):
        st = s["state"]
        per = st["bytes"] / st["messages"] if st["messages"] else 0
        print(f"stream {s['name']}: {st['messages']} msgs, {st['bytes']} bytes ({per:.0f} per message)")
PY
