//! A cluster on one machine: three NATS servers (JetStream, replicas 3) and three callguard
//! nodes, each pair in its own network namespace on a bridge, haproxy in front for gRPC. Calls
//! go through haproxy; a subscriber on node A must hear every alert any client saw, once, in
//! the cluster's order, while a node is killed (`kill -9`), a NATS server is killed, and a node
//! is cut off from NATS for 30 s and healed.
//!
//! Needs root (namespaces, veth, iptables), `nats-server` and `haproxy`: `scripts/setup.sh`
//! installs them, and CI runs as root.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callguard::grpc::proto as pb;
use common::grpc::*;
use tokio::time::{Instant, sleep, timeout};

const NODES: [&str; 3] = ["a", "b", "c"];
const BRIDGE: &str = "cgbr0";
const SUBNET: &str = "10.88.0";
const WEBHOOK_SECRET: &str = "cluster-soc-secret";

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ns(i: usize) -> String {
    format!("cgn{}", i + 1)
}

fn ip(i: usize) -> String {
    format!("{SUBNET}.{}", 11 + i)
}

/// The namespaces and the bridge, removed on drop (and before, if a crashed run left them).
struct Net;

impl Net {
    fn up() -> Self {
        Self::down();
        must(&["ip", "link", "add", BRIDGE, "type", "bridge"]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{SUBNET}.1/24"),
            "dev",
            BRIDGE,
        ]);
        must(&["ip", "link", "set", BRIDGE, "up"]);
        for i in 0..NODES.len() {
            let (n, host, peer) = (ns(i), format!("cgv{}", i + 1), format!("cgp{}", i + 1));
            must(&["ip", "netns", "add", &n]);
            must(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer, "netns", &n,
            ]);
            must(&["ip", "link", "set", &host, "master", BRIDGE, "up"]);
            must(&["ip", "netns", "exec", &n, "ip", "link", "set", "lo", "up"]);
            must(&[
                "ip",
                "netns",
                "exec",
                &n,
                "ip",
                "addr",
                "add",
                &format!("{}/24", ip(i)),
                "dev",
                &peer,
            ]);
            must(&["ip", "netns", "exec", &n, "ip", "link", "set", &peer, "up"]);
        }
        Net
    }

    fn down() {
        for i in 0..NODES.len() {
            sh(&["ip", "netns", "del", &ns(i)]);
            sh(&["ip", "link", "del", &format!("cgv{}", i + 1)]);
        }
        sh(&["ip", "link", "del", BRIDGE]);
    }

    /// Cuts namespace `i` off from every NATS server (client and route ports), both ways.
    fn cut_nats(i: usize, cut: bool) {
        let op = if cut { "-I" } else { "-D" };
        for chain_port in [
            ("INPUT", "--dport"),
            ("INPUT", "--sport"),
            ("OUTPUT", "--dport"),
            ("OUTPUT", "--sport"),
        ] {
            for port in ["4222", "6222"] {
                must(&[
                    "ip",
                    "netns",
                    "exec",
                    &ns(i),
                    "iptables",
                    op,
                    chain_port.0,
                    "-p",
                    "tcp",
                    chain_port.1,
                    port,
                    "-j",
                    "DROP",
                ]);
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        Self::down();
    }
}

/// A child process killed on drop.
struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let kept = log.clone();
        let show = std::env::var_os("CALLGUARD_TEST_LOG").is_some();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if show {
                    eprintln!("{line}");
                }
                kept.lock().unwrap().push(line);
            }
        });
        Self { child, log }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn in_ns(i: usize, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns(i), program]);
    cmd
}

fn nats_server(dir: &Path, i: usize) -> Proc {
    let conf = dir.join(format!("nats-{i}.conf"));
    let routes: Vec<String> = (0..NODES.len())
        .filter(|j| *j != i)
        .map(|j| format!("nats://{}:6222", ip(j)))
        .collect();
    std::fs::write(
        &conf,
        format!(
            "server_name: n{i}\nlisten: {ip}:4222\nhttp: {ip}:8222\njetstream {{ store_dir: \"{store}\" }}\n\
             cluster {{ name: cg, listen: {ip}:6222, routes: [{routes}] }}\n",
            ip = ip(i),
            store = dir.join(format!("js-{i}")).display(),
            routes = routes.join(", "),
        ),
    )
    .unwrap();
    let mut cmd = in_ns(i, "nats-server");
    cmd.args(["-c", conf.to_str().unwrap()]);
    Proc::spawn(cmd)
}

fn node_config(dir: &Path, i: usize, webhook: u16) -> PathBuf {
    let path = dir.join(format!("node-{i}.toml"));
    // Its own NATS server first; the client fails over to the others.
    let mut urls: Vec<String> = vec![format!("\"nats://{}:4222\"", ip(i))];
    urls.extend(
        (0..NODES.len())
            .filter(|j| *j != i)
            .map(|j| format!("\"nats://{}:4222\"", ip(j))),
    );
    std::fs::write(
        &path,
        format!(
            r#"[speech]
vad_model = "{vad}"
[detector]
model = "{model}"
when_full = "block"
[server]
listen = "{ip}:50051"
max_speed = 1000.0
burst_ms = 3600000
[[server.tenants]]
name = "bank-a"
token_sha256 = "{a}"
[[server.tenants]]
name = "bank-b"
token_sha256 = "{b}"
[http]
listen = "{ip}:9090"
[transcribe]
enabled = false
[store]
path = "{store}"
[cluster]
nats = [{urls}]
node = "{node}"
replicas = 3
heartbeat_ms = 500
node_timeout_ms = 8000
[[sinks.webhook]]
name = "soc"
url = "http://{SUBNET}.1:{webhook}/callguard"
secret_env = "CALLGUARD_TEST_WEBHOOK_SECRET"
retry_initial_ms = 100
retry_max_ms = 400
timeout_ms = 5000
"#,
            vad = common::root().join(".deps/silero_vad.onnx").display(),
            model = common::root()
                .join(".deps/test-models/loudness.onnx")
                .display(),
            ip = ip(i),
            a = callguard::grpc::token_sha256(TOKEN_A),
            b = callguard::grpc::token_sha256(TOKEN_B),
            store = dir.join(format!("alerts-{i}.db")).display(),
            urls = urls.join(", "),
            node = NODES[i],
        ),
    )
    .unwrap();
    path
}

fn node(dir: &Path, i: usize, webhook: u16) -> Proc {
    let mut cmd = in_ns(i, env!("CARGO_BIN_EXE_callguard"));
    cmd.env("CALLGUARD_TEST_WEBHOOK_SECRET", WEBHOOK_SECRET);
    cmd.args([
        "--config",
        node_config(dir, i, webhook).to_str().unwrap(),
        "run",
        "--json",
    ])
    .env("CALLGUARD_LOG", "info,callguard::cluster=debug");
    Proc::spawn(cmd)
}

fn haproxy(dir: &Path) -> (Proc, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let servers: String = (0..NODES.len())
        .map(|i| {
            format!(
                "  server {} {}:50051 proto h2 check inter 300 fall 2 rise 2\n",
                NODES[i],
                ip(i)
            )
        })
        .collect();
    let conf = dir.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "defaults\n  mode http\n  timeout connect 2s\n  timeout client 120s\n  timeout server 120s\n\
             frontend grpc\n  bind 127.0.0.1:{port} proto h2\n  default_backend nodes\n\
             backend nodes\n  balance roundrobin\n{servers}"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.args(["-db", "-f", conf.to_str().unwrap()]);
    (Proc::spawn(cmd), format!("http://127.0.0.1:{port}"))
}

/// Node `i`'s `/cluster` when it answers 200.
fn cluster_status(i: usize) -> Option<serde_json::Value> {
    get_json(i, 9090, "/cluster")
}

/// A JSON document from an HTTP port in namespace `i` when it answers 200.
fn get_json(i: usize, port: u16, path: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = format!("{}:{port}", ip(i)).parse().unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200"))
        .then(|| serde_json::from_str(body).ok())
        .flatten()
}

/// Waits until every node in `nodes` is connected and sees all of `nodes` alive.
async fn wait_ready(nodes: &[usize], procs: &[Proc]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ready = nodes.iter().all(|&i| {
            cluster_status(i).is_some_and(|s| {
                s["nodes"].as_array().is_some_and(|ns| {
                    nodes.iter().all(|&j| {
                        ns.iter()
                            .any(|n| n["node"] == NODES[j] && n["alive"] == true)
                    })
                })
            })
        });
        if ready {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(Proc::tail).collect();
            let views: Vec<_> = nodes.iter().map(|&i| cluster_status(i)).collect();
            panic!(
                "the cluster did not come up: {views:?}\n{}",
                logs.join("\n---\n")
            );
        }
        sleep(Duration::from_millis(300)).await;
    }
}

/// One call streamed through `url`, `frames` paced at `pace` per frame; when the stream breaks
/// (its node died) it reconnects with the same call id and sends the rest, unless the call is
/// in `abandon` by then.
/// Returns every alert id the client saw.
async fn paced_call(
    url: String,
    call_id: String,
    frames: Vec<Vec<u8>>,
    rate: u32,
    pace: Duration,
    abandon: Arc<Mutex<HashSet<String>>>,
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut next = 0usize;
    let total = frames.len();
    let frames = Arc::new(frames);
    while next < total {
        let mut c = match timeout(Duration::from_secs(5), client(&url, TOKEN_A)).await {
            Ok(c) => c,
            Err(_) => continue,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(next));
        let (f, s, id) = (frames.clone(), sent.clone(), call_id.clone());
        let start = next;
        let feeder = tokio::spawn(async move {
            let _ = tx.send(open_frame(&id, pb::Codec::Pcm16le, rate, 1)).await;
            for (k, d) in f.iter().enumerate().skip(start) {
                if tx.send(audio_frame(k as u64, d.clone())).await.is_err() {
                    return;
                }
                s.store(k + 1, std::sync::atomic::Ordering::SeqCst);
                sleep(pace).await;
            }
        });
        let opened = c
            .stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        let broke = match opened {
            Ok(resp) => {
                let mut inbound = resp.into_inner();
                loop {
                    match inbound.message().await {
                        Ok(Some(u)) => {
                            if let Some(pb::call_update::Update::Alert(a)) = u.update {
                                seen.push(a.id);
                            }
                        }
                        Ok(None) => break false,
                        Err(_) => break true,
                    }
                }
            }
            Err(_) => true,
        };
        feeder.abort();
        next = sent.load(std::sync::atomic::Ordering::SeqCst);
        if !broke || abandon.lock().unwrap().contains(&call_id) {
            break;
        }
        sleep(Duration::from_millis(300)).await;
    }
    seen
}

type Heard = Arc<Mutex<Vec<(u64, String)>>>;

/// A subscriber on one node for every alert of the cluster (from the start), reconnecting
/// after the last sequence it heard if its stream breaks.
fn subscribe(url: String) -> Heard {
    let heard: Heard = Arc::default();
    let out = heard.clone();
    tokio::spawn(async move {
        loop {
            let after = out.lock().unwrap().last().map_or(0, |(s, _)| *s);
            let Ok(Ok(mut c)) = timeout(Duration::from_secs(5), async {
                Ok::<_, ()>(client(&url, TOKEN_A).await)
            })
            .await
            else {
                sleep(Duration::from_millis(500)).await;
                continue;
            };
            let stream = c
                .stream_alerts(pb::AlertSubscription {
                    after_sequence: Some(after),
                    ..Default::default()
                })
                .await;
            let Ok(stream) = stream else {
                sleep(Duration::from_millis(500)).await;
                continue;
            };
            let mut stream = stream.into_inner();
            while let Ok(Some(event)) = stream.message().await {
                if let Some(pb::alert_event::Event::Alert(a)) = event.event {
                    out.lock().unwrap().push((a.sequence, a.id));
                }
            }
            sleep(Duration::from_millis(500)).await;
        }
    });
    heard
}

/// Waits up to `within` until `got` holds every alert in `seen`; the ones still missing if not.
async fn wait_for_all(got: &Heard, seen: &[String], within: Duration) -> Result<(), Vec<String>> {
    let deadline = Instant::now() + within;
    loop {
        let have: HashSet<String> = got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, id)| id.clone())
            .collect();
        let missing: Vec<String> = seen
            .iter()
            .filter(|id| !have.contains(*id))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(missing);
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the subscriber has heard every alert in `seen`, then checks that it heard none
/// twice and in strictly increasing cluster order.
async fn all_heard_once(heard: &Heard, seen: &[String], what: &str, procs: &[&Proc]) {
    if let Err(missing) = wait_for_all(heard, seen, Duration::from_secs(60)).await {
        let logs: Vec<String> = procs.iter().map(|p| p.tail()).collect();
        panic!(
            "{what}: the subscriber never heard {missing:?}\n{}",
            logs.join("\n---\n")
        );
    }
    let heard = heard.lock().unwrap();
    let ids: HashSet<&String> = heard.iter().map(|(_, id)| id).collect();
    assert_eq!(
        ids.len(),
        heard.len(),
        "{what}: an alert was heard twice: {heard:?}"
    );
    assert!(
        heard.windows(2).all(|w| w[0].0 < w[1].0),
        "{what}: not in cluster order: {heard:?}"
    );
}

async fn get_call(url: &str, call_id: &str) -> Option<pb::CallInfo> {
    let mut c = client(url, TOKEN_A).await;
    c.get_call(pb::GetCallRequest {
        call_id: call_id.into(),
    })
    .await
    .ok()
    .map(|r| r.into_inner())
}

/// Polls `GetCall` on `url` until `ok` holds for the call.
async fn call_becomes(
    url: &str,
    call_id: &str,
    ok: impl Fn(&pb::CallInfo) -> bool,
    what: &str,
) -> pb::CallInfo {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = get_call(url, call_id).await;
        if let Some(info) = info.as_ref().filter(|i| ok(i)) {
            return info.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: call {call_id} is {info:?}"
        );
        sleep(Duration::from_millis(300)).await;
    }
}

fn spawn_calls(
    url: &str,
    prefix: &str,
    n: usize,
    cycles: usize,
    pace: Duration,
    abandon: &Arc<Mutex<HashSet<String>>>,
) -> Vec<(String, tokio::task::JoinHandle<Vec<String>>)> {
    let (frames, rate) = common::loud_quiet_frames(cycles);
    (0..n)
        .map(|k| {
            let id = format!("{prefix}-{k}");
            let task = tokio::spawn(paced_call(
                url.to_owned(),
                id.clone(),
                frames.clone(),
                rate,
                pace,
                abandon.clone(),
            ));
            (id, task)
        })
        .collect()
}

async fn seen_by_clients(
    calls: Vec<(String, tokio::task::JoinHandle<Vec<String>>)>,
) -> Vec<String> {
    let mut seen = Vec::new();
    for (_, task) in calls {
        seen.extend(task.await.unwrap());
    }
    seen
}

/// The SOC's webhook receiver on the bridge (every node reaches it): its port, and each alert
/// it accepted as (stream sequence, alert id), in arrival order (like a subscriber's).
fn webhook_receiver() -> (Proc, u16, Heard) {
    let mut cmd = Command::new(common::root().join(".deps/venv/bin/python"));
    cmd.arg(common::root().join("tests/clients/webhook_receiver.py"))
        .args([
            "--secret",
            WEBHOOK_SECRET,
            "--port",
            "0",
            "--host",
            &format!("{SUBNET}.1"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("run scripts/setup.sh for .deps/venv");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let port = first["listening"].as_u64().unwrap() as u16;
    let accepted: Heard = Arc::default();
    let out = accepted.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["accepted"] == true && v["type"] == "alert" {
                let id = v["id"].as_str().unwrap_or_default().to_owned();
                out.lock()
                    .unwrap()
                    .push((v["sequence"].as_u64().unwrap_or(0), id));
            }
        }
    });
    let log = Arc::new(Mutex::new(Vec::new()));
    (Proc { child, log }, port, accepted)
}

fn varz() -> Vec<Option<serde_json::Value>> {
    (0..NODES.len())
        .map(|i| get_json(i, 8222, "/varz"))
        .collect()
}

/// For `bench/cluster.sh` and the capacity model in `docs/cluster.md`: what NATS carried up
/// during the load phase (6 calls, `audio_ms` of audio, `alerts` alerts), from the
/// servers' `/varz` and `/jsz` and the nodes' `/cluster`.
fn report(path: &str, before: Vec<Option<serde_json::Value>>, audio_ms: u64, alerts: usize) {
    let jsz = get_json(0, 8222, "/jsz?accounts=true&streams=true");
    let nodes: Vec<_> = (0..NODES.len()).map(cluster_status).collect();
    let doc = serde_json::json!({
        "phase": "load: 6 calls through haproxy, loudness test model",
        "call_audio_ms": audio_ms,
        "alerts": alerts,
        "varz_before": before,
        "varz": varz(),
        "jsz": jsz,
        "nodes": nodes,
    });
    std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
}

fn grpc(i: usize) -> String {
    format!("http://{}:50051", ip(i))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_jetstream_lose_and_repeat_no_alert_through_node_and_server_failures() {
    let dir = tempfile::tempdir().unwrap();
    let _net = Net::up();
    let mut servers: Vec<Proc> = (0..NODES.len())
        .map(|i| nats_server(dir.path(), i))
        .collect();
    let (_receiver, webhook, delivered) = webhook_receiver();
    let mut nodes: Vec<Proc> = (0..NODES.len())
        .map(|i| node(dir.path(), i, webhook))
        .collect();
    let (_haproxy, lb) = haproxy(dir.path());
    wait_ready(&[0, 1, 2], &nodes).await;
    let heard = subscribe(grpc(0));
    let none = Arc::new(Mutex::new(HashSet::new()));

    // 1. Load through haproxy: every node's alerts reach the subscriber on A, once, in order.
    let before = varz();
    let calls = spawn_calls(&lb, "load", 6, 1, Duration::ZERO, &none);
    let ids: Vec<String> = calls.iter().map(|(id, _)| id.clone()).collect();
    let mut seen = seen_by_clients(calls).await;
    assert_eq!(seen.len(), 12, "each call alerts and clears: {seen:?}");
    all_heard_once(&heard, &seen, "load", &nodes.iter().collect::<Vec<_>>()).await;
    let mut owners = HashSet::new();
    let mut load_audio_ms = 0;
    for id in &ids {
        let info = call_becomes(
            &grpc(0),
            id,
            |i| i.state == pb::CallState::Ended as i32 && !i.node.is_empty(),
            "load",
        )
        .await;
        assert_eq!(info.alerts, 2, "{info:?}");
        load_audio_ms += info.audio_ms;
        owners.insert(info.node);
    }
    assert_eq!(
        owners.len(),
        3,
        "haproxy spread the calls over every node: {owners:?}"
    );
    if let Ok(path) = std::env::var("CALLGUARD_CLUSTER_REPORT") {
        report(&path, before, load_audio_ms, seen.len());
    }

    // 2. kill -9 node C mid-call: one of its calls is continued through haproxy on another
    //    node under the same id, the others are abandoned and must be reported ended.
    let abandon = Arc::new(Mutex::new(HashSet::new()));
    let calls = spawn_calls(&lb, "kill", 6, 3, Duration::from_millis(4), &abandon);
    let ids: Vec<String> = calls.iter().map(|(id, _)| id.clone()).collect();
    // Wait until A lists all six (its own and, from the bucket, the others').
    let on_c = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut c = client(&grpc(0), TOKEN_A).await;
            let listed = c
                .list_calls(pb::ListCallsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .calls;
            let live: Vec<_> = listed.iter().filter(|i| ids.contains(&i.call_id)).collect();
            if live.len() == 6 {
                break live
                    .iter()
                    .filter(|i| i.node == "c")
                    .map(|i| i.call_id.clone())
                    .collect::<Vec<_>>();
            }
            assert!(Instant::now() < deadline, "A lists {listed:?}");
            sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(!on_c.is_empty(), "no call landed on C");
    let resumed = on_c[0].clone();
    abandon.lock().unwrap().extend(on_c[1..].iter().cloned());
    nodes[2].kill9();
    seen = seen_by_clients(calls).await;
    let info = call_becomes(
        &grpc(0),
        &resumed,
        |i| i.state == pb::CallState::Ended as i32 && !i.resumed_from_node.is_empty(),
        "resumed",
    )
    .await;
    assert_eq!(info.resumed_from_node, "c", "{info:?}");
    assert_ne!(info.node, "c");
    for id in &on_c[1..] {
        let info = call_becomes(
            &grpc(1),
            id,
            |i| i.state == pb::CallState::Ended as i32,
            "abandoned",
        )
        .await;
        assert_eq!(
            (info.node.as_str(), info.end_reason.as_str()),
            ("c", "node_lost"),
            "{info:?}"
        );
    }
    // C comes back: what it committed and had not published yet goes out now, still once.
    nodes[2] = node(dir.path(), 2, webhook);
    wait_ready(&[0, 1, 2], &nodes).await;
    sleep(Duration::from_secs(2)).await;
    all_heard_once(
        &heard,
        &seen,
        "kill -9 C (after its restart)",
        &nodes.iter().collect::<Vec<_>>(),
    )
    .await;

    // 3. kill -9 one NATS server (B's own) mid-load: B fails over, nothing is lost.
    let calls = spawn_calls(&lb, "nats", 3, 2, Duration::from_millis(3), &none);
    sleep(Duration::from_millis(1500)).await;
    servers[1].kill9();
    seen = seen_by_clients(calls).await;
    assert_eq!(seen.len(), 12, "{seen:?}");
    all_heard_once(
        &heard,
        &seen,
        "kill -9 NATS server 2",
        &nodes.iter().collect::<Vec<_>>(),
    )
    .await;
    servers[1] = nats_server(dir.path(), 1);

    // 4. C cut off from NATS for 30 s: it keeps screening (a call straight to it alerts), says
    //    it is not ready for cluster work, and publishes its backlog, in order, once healed.
    Net::cut_nats(2, true);
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster_status(2).is_some() {
        assert!(
            Instant::now() < deadline,
            "C still says it is in the cluster"
        );
        sleep(Duration::from_millis(300)).await;
    }
    let calls = spawn_calls(&grpc(2), "cut", 1, 2, Duration::ZERO, &none);
    let cut_seen = seen_by_clients(calls).await;
    assert_eq!(cut_seen.len(), 4, "C screens while cut off: {cut_seen:?}");
    sleep(Duration::from_secs(30)).await;
    assert!(
        !heard
            .lock()
            .unwrap()
            .iter()
            .any(|(_, id)| cut_seen.contains(id)),
        "an alert crossed the cut"
    );
    Net::cut_nats(2, false);
    wait_ready(&[0, 1, 2], &nodes).await;
    seen.extend(cut_seen);
    all_heard_once(&heard, &seen, "C healed", &nodes.iter().collect::<Vec<_>>()).await;
    let info = call_becomes(
        &grpc(0),
        "cut-0",
        |i| i.state == pb::CallState::Ended as i32,
        "cut call",
    )
    .await;
    assert_eq!(info.node, "c");

    // The SOC's webhook got every alert from one node or another, in the cluster's order; an
    // alert is delivered twice only if a node died (or was cut off) between delivering it and
    // JetStream taking the acknowledgement (twice here at most: the kill and the cut).
    if let Err(missing) = wait_for_all(&delivered, &seen, Duration::from_secs(90)).await {
        panic!("the webhook never got {missing:?}");
    }
    let delivered = delivered.lock().unwrap().clone();
    let mut first = Vec::new();
    let mut ids = HashSet::new();
    for (seq, id) in &delivered {
        if ids.insert(id.clone()) {
            first.push(*seq);
        }
    }
    assert!(
        delivered.len() - first.len() <= 2,
        "delivered more than once: {delivered:?}"
    );
    assert!(
        first.windows(2).all(|w| w[0] < w[1]),
        "webhook order: {delivered:?}"
    );
}
