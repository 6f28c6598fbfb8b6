//! Floods against every listener at once, each with what must survive: slow clients that never
//! finish a request (slowloris) on gRPC, the operations HTTP, the connectors' WebSocket
//! listener, AudioSocket and SIP over TCP; a thousand idle `StreamAlerts` subscriptions and a
//! thousand idle calls from one tenant; oversized and malformed messages on each listener.
//! Meanwhile another tenant's call is screened and its alert delivered, health answers, memory
//! stays within a stated bound, and the descriptors come back when the flood goes.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use callguard::audio::g711::Law;
use callguard::grpc::proto as pb;
use common::grpc::*;

const IDLE_CALLS: usize = 1_000;
const SUBSCRIPTIONS: usize = 1_000;
const SLOW_PER_LISTENER: usize = 100;
const TWILIO_ENV: &str = "CALLGUARD_TEST_FLOOD_TWILIO";

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1e3
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Opens `n` connections to `addr`, each sending `opening` and then nothing more.
fn slow_clients(addr: &str, opening: &[u8], n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| {
            let mut s = TcpStream::connect(addr).ok()?;
            let _ = s.write_all(opening);
            Some(s)
        })
        .collect()
}

/// Whether the listener at `addr` deals with `probe`: it accepts the connection, then answers,
/// closes or resets it within 20 s rather than leaving it hanging.
fn answers(addr: &str, probe: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    if s.write_all(probe).is_err() {
        return true; // Closed on us: refused, not hung.
    }
    let mut buf = [0u8; 64];
    // An answer, an end or a reset are all the listener dealing with it; only silence is not.
    !matches!(
        std::io::Read::read(&mut s, &mut buf),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_on_every_listener_leave_another_tenant_served_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::daemon::write_config(
        dir.path(),
        1000.0,
        false,
        &format!(
            r#"[http]
listen = "127.0.0.1:0"
[connectors]
listen = "127.0.0.1:0"
[[connectors.twilio]]
tenant = "bank-b"
auth_token_env = "{TWILIO_ENV}"
[[connectors.audiosocket]]
listen = "127.0.0.1:0"
tenant = "bank-b"
[siprec]
listen = "127.0.0.1:0"
rtp_ports = [45000, 45999]
[[siprec.peers]]
tenant = "bank-b"
addresses = ["127.0.0.1"]
[[server.tenants]]
name = "bank-b"
token_sha256 = "{b}"
"#,
            b = callguard::grpc::token_sha256(TOKEN_B)
        ),
    );
    let daemon = common::daemon::Daemon::start(
        &config,
        &[(TWILIO_ENV, "flood-test-auth-token")],
        &[
            "gRPC",
            "operations HTTP",
            "connectors",
            "AudioSocket",
            "SIPREC",
        ],
    );
    let pid = daemon.child.id();
    let (grpc, ops) = (
        daemon.addr("gRPC").to_owned(),
        daemon.addr("operations HTTP").to_owned(),
    );
    let (ws, audiosocket, sip) = (
        daemon.addr("connectors").to_owned(),
        daemon.addr("AudioSocket").to_owned(),
        daemon.addr("SIPREC").to_owned(),
    );
    let fds_before = fds(pid);
    let rss_before = rss_mb(pid);

    // Slowloris on every TCP listener: a request begun and never finished.
    let mut slow = Vec::new();
    for (addr, opening) in [
        (&grpc, &b"PRI * HTTP/2.0\r\n"[..]),
        (&ops, &b"GET /metrics HTTP/1.1\r\nHost: x\r\n"[..]),
        (
            &ws,
            &b"GET /twilio/bank-b HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"[..],
        ),
        (&audiosocket, &b"\x01\x00"[..]),
        (
            &sip,
            &b"INVITE sip:srs@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1"[..],
        ),
    ] {
        slow.extend(slow_clients(addr, opening, SLOW_PER_LISTENER));
    }

    // Bank B: a thousand idle subscriptions (over ten connections) and a thousand idle calls.
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(
            tonic::transport::Channel::from_shared(format!("http://{grpc}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let (mut subscribed, mut refused) = (Vec::new(), 0);
    for i in 0..SUBSCRIPTIONS {
        let mut c = with_token(channels[i % channels.len()].clone(), TOKEN_B);
        match c.stream_alerts(pb::AlertSubscription::default()).await {
            Ok(s) => subscribed.push(s.into_inner()),
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
                refused += 1;
            }
        }
    }
    let per_tenant = callguard::config::ServerConfig::default().max_subscribers_per_tenant;
    assert_eq!(
        subscribed.len(),
        per_tenant,
        "one tenant's subscriptions are capped"
    );
    assert_eq!(refused, SUBSCRIPTIONS - per_tenant);
    let mut idle_calls = Vec::new();
    for i in 0..IDLE_CALLS {
        let mut c = with_token(channels[i % channels.len()].clone(), TOKEN_B);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(open_frame(
            &format!("idle-{i}"),
            pb::Codec::G711Mulaw,
            8_000,
            1,
        ))
        .await
        .unwrap();
        let stream = c
            .stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        idle_calls.push((tx, stream));
    }
    let mut info = with_token(channels[0].clone(), TOKEN_B);
    let mut live = 0;
    for _ in 0..100 {
        live = info
            .list_calls(pb::ListCallsRequest {})
            .await
            .unwrap()
            .into_inner()
            .calls
            .len();
        if live >= IDLE_CALLS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(live, IDLE_CALLS, "every idle call is open");

    // Oversized and malformed messages on every listener.
    let mut big = with_token(channels[0].clone(), TOKEN_B);
    let err = stream_call(
        &mut big,
        open_frame("oversized", pb::Codec::G711Mulaw, 8_000, 1),
        vec![audio_frame(0, vec![0x7f; 4 << 20])],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument
        ),
        "{err}"
    );
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    assert!(answers(&ops, huge_header.as_bytes()));
    assert!(answers(
        &ws,
        huge_header.replace("/healthz", "/twilio/bank-b").as_bytes()
    ));
    let mut sip_junk =
        b"OPTIONS sip:srs@example.com SIP/2.0\r\nContent-Length: 999999999\r\n\r\n".to_vec();
    sip_junk.extend(vec![b'x'; 1 << 20]);
    assert!(answers(&sip, &sip_junk));
    // AudioSocket: a whole 64 KB audio frame before the call's UUID.
    let mut frame = vec![0x10, 0xff, 0xff];
    frame.extend(vec![0u8; 0xffff]);
    assert!(answers(&audiosocket, &frame));
    assert!(answers(&grpc, &[0u8; 4096]));

    // Meanwhile bank A is served: a subscriber, a clone call, its alert; health answers.
    let mut a = client(&format!("http://{grpc}"), TOKEN_A).await;
    let mut alerts = a
        .stream_alerts(pb::AlertSubscription::default())
        .await
        .expect("another tenant's subscriber is refused")
        .into_inner();
    let (clone, rate) = decode("synthetic_espeak_ulaw.wav");
    let updates = stream_call(
        &mut a,
        open_frame("bank-a-call", pb::Codec::G711Mulaw, rate, 1),
        numbered(g711_frames(&clone, rate, Law::MuLaw)),
    )
    .await
    .unwrap();
    assert!(
        !alerts_of(&updates).is_empty(),
        "the clone call raised no alert under the flood"
    );
    let heard = tokio::time::timeout(Duration::from_secs(60), alerts.message())
        .await
        .expect("bank A's subscriber heard nothing")
        .unwrap()
        .unwrap();
    assert!(matches!(
        heard.event,
        Some(pb::alert_event::Event::Alert(_))
    ));
    assert_eq!(common::http_get(&ops, "/healthz").0, 200);

    let rss_peak = rss_mb(pid);
    // Bounded: the daemon's own footprint, plus at most 300 KB per idle call and 16 KB per
    // other connection or subscription held open.
    let held = (slow.len() + subscribed.len()) as f64;
    let bound = rss_before + IDLE_CALLS as f64 * 0.3 + held * 0.016 + 64.0;
    assert!(
        rss_peak < bound,
        "{rss_peak:.0} MB resident under the flood, bound {bound:.0} MB"
    );
    eprintln!(
        "flood: {} slow connections, {} subscriptions ({refused} refused), {IDLE_CALLS} idle calls; resident {rss_before:.0} -> {rss_peak:.0} MB (bound {bound:.0})",
        slow.len(),
        subscribed.len()
    );

    // The flood goes; so do its descriptors.
    drop(slow);
    drop(subscribed);
    drop(idle_calls);
    drop(channels);
    drop(info);
    drop(big);
    let mut now = fds(pid);
    for _ in 0..200 {
        if now <= fds_before + 16 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = fds(pid);
    }
    assert!(
        now <= fds_before + 16,
        "{now} descriptors open after the flood, {fds_before} before"
    );
}
