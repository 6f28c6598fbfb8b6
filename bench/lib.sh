# Shared by the shell benches: sourced, not run.

# cpu_by_thread PID: each second until PID exits, one line "TIME CONNECT_S OTHER_S RSS_KB": CPU
# seconds so far of the daemon's "connect" threads (the protocol adapters: SIP, RTP, WebSocket,
# AudioSocket) and of all its other threads (the detection path), and its resident memory.
cpu_by_thread() {
  local pid=$1 hz
  hz=$(getconf CLK_TCK)
  while kill -0 "$pid" 2>/dev/null; do
    awk -v hz="$hz" -v t="$(date +%s.%N)" -v rss="$(awk '/VmRSS/{print $2}' "/proc/$pid/status" 2>/dev/null)" '
      { n = $0; sub(/^[^(]*\(/, "", n); name = n; sub(/\).*/, "", name); sub(/^[^)]*\) /, "", n);
        split(n, f, " "); cpu = (f[12] + f[13]) / hz;
        if (name == "connect") c += cpu; else o += cpu }
      END { printf "%s %.2f %.2f %s\n", t, c, o, rss }' /proc/"$pid"/task/*/stat 2>/dev/null || true
    sleep 1
  done
}

# wait_listening LOG WHAT: until the daemon's log says WHAT is listening (at most 10 s).
wait_listening() {
  for _ in $(seq 100); do grep -q "$2 listening" "$1" && return 0; sleep 0.1; done
  echo "the daemon never said $2 is listening:" >&2; tail -20 "$1" >&2; return 1
}
