//! What the daemon writes to its log, at every level (trace included, dependencies too), while
//! it does everything that handles secrets: a caller reads a card number aloud on a transcribed
//! call, a subscriber and a supervisor authenticate with tenant tokens, a wrong token is tried
//! on gRPC and on the supervisor login, and an agent acknowledges the alert with a note that
//! quotes the card. The log holds no token, no card number and nothing the caller said.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use callguard::audio::g711::Law;
use callguard::grpc::proto as pb;
use common::grpc::*;

const WRONG_TOKEN: &str = "cg_wrong-but-secret-7d1f9a";
const NOTE: &str = "caller read 4111 1111 1111 1111 twice";

/// A form POST to the supervisor's login; returns the status line.
fn login(addr: &str, token: &str) -> String {
    let body = format!("token={token}");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /supervisor/login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_card_number_or_transcript_reaches_the_log_at_any_level() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        common::daemon::write_config(dir.path(), 1000.0, true, "[http]\nlisten = \"127.0.0.1:0\"");
    let daemon = common::daemon::Daemon::start(
        &config,
        &[("CALLGUARD_LOG", "trace")],
        &["gRPC", "operations HTTP"],
    );
    let ops = daemon.addr("operations HTTP").to_owned();
    assert!(login(&ops, WRONG_TOKEN).contains("401"));
    assert!(login(&ops, TOKEN_A).contains("303"));

    let mut wrong = client(&daemon.grpc_url(), WRONG_TOKEN).await;
    assert!(wrong.list_calls(pb::ListCallsRequest {}).await.is_err());
    let mut a = client(&daemon.grpc_url(), TOKEN_A).await;
    let mut alerts = a
        .stream_alerts(pb::AlertSubscription::default())
        .await
        .unwrap()
        .into_inner();
    let (card, rate) = decode("card.wav");
    let card_8k: Vec<f32> = if rate == 8_000 {
        card
    } else {
        // The espeak recording is 22.05 kHz: nearest-sample to 8 kHz is enough for a phone call.
        (0..card.len() * 8_000 / rate as usize)
            .map(|i| card[i * rate as usize / 8_000])
            .collect()
    };
    let updates = stream_call(
        &mut a,
        open_frame("card-call", pb::Codec::G711Mulaw, 8_000, 1),
        numbered(g711_frames(&card_8k, 8_000, Law::MuLaw)),
    )
    .await
    .unwrap();
    let said: Vec<String> = updates
        .iter()
        .filter_map(|u| match &u.update {
            Some(pb::call_update::Update::Transcript(t)) => Some(t.text.clone()),
            _ => None,
        })
        .collect();
    assert!(
        !said.is_empty(),
        "the call was not transcribed: {updates:?}"
    );
    let alert = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let e = alerts.message().await.unwrap().unwrap();
            if let Some(pb::alert_event::Event::Alert(a)) = e.event {
                return a;
            }
        }
    })
    .await
    .expect("the clone call raised no alert");
    a.acknowledge_alert(pb::AcknowledgeAlertRequest {
        alert_id: alert.id.clone(),
        by: "agent-7".into(),
        note: NOTE.into(),
    })
    .await
    .unwrap();
    drop((a, wrong, alerts));
    assert!(daemon.log.lock().unwrap().len() > 20, "trace logging is on");
    let stopped = {
        let log = daemon.log.clone();
        assert!(daemon.stop(), "the daemon did not stop cleanly");
        log.lock().unwrap().join("\n")
    };
    for secret in [
        TOKEN_A,
        WRONG_TOKEN,
        "4111 1111",
        "card number is",
        "read 4111",
    ] {
        assert!(!stopped.contains(secret), "{secret:?} is in the log");
    }
    for text in &said {
        // Each transcript segment's words (masks aside) appear nowhere in the log.
        let words = text.replace("[number]", "").replace("[card]", "");
        let words = words.trim();
        if words.len() >= 12 {
            assert!(
                !stopped.contains(words),
                "transcript {words:?} is in the log"
            );
        }
    }
    common::assert_no_card(&stopped, "daemon log at trace level");
}
