//! The supervisor's live page in a real browser: Debian's chromium driven by playwright-core
//! (`tests/browser/supervisor.mjs`) logs in, watches a call stream in and turn red when the
//! caller's voice becomes a clone, opens it (timeline, evidence, transcript), acknowledges its
//! alert, logs out, and logs in as another tenant who sees none of it. Screenshots of each step
//! go to `target/tmp/supervisor-screenshots/`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use callguard::alert::AlertLog;
use callguard::audio::g711::Law;
use callguard::grpc::proto as pb;
use common::daemon::Daemon;
use common::grpc::{TOKEN_A, TOKEN_B, audio_frame, decode, g711_frames, open_frame};

/// Streams a genuine caller who switches to the espeak clone, at four times real time.
fn stream_switch_call(grpc_url: String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = common::grpc::client(&grpc_url, TOKEN_A).await;
        let (genuine, rate) = decode("genuine_1_alaw.wav");
        let (clone, clone_rate) = decode("synthetic_espeak_ulaw.wav");
        assert_eq!(rate, clone_rate);
        let mut frames = g711_frames(&genuine, rate, Law::MuLaw);
        frames.extend(g711_frames(&clone, rate, Law::MuLaw));
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let send = tokio::spawn(async move {
            let mut open = open_frame("sup-1", pb::Codec::G711Mulaw, rate, 1);
            if let Some(pb::audio_frame::Frame::Open(o)) = &mut open.frame {
                o.metadata.as_mut().unwrap().ani = "+15550142".into();
            }
            tx.send(open).await.unwrap();
            for (i, f) in frames.into_iter().enumerate() {
                tx.send(audio_frame(i as u64, f)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let mut updates = client
            .stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        while updates.message().await.unwrap().is_some() {}
        send.await.unwrap();
    });
}

#[test]
fn a_supervisor_sees_a_clone_call_turn_red_opens_it_and_acknowledges_the_alert() {
    let dir = tempfile::tempdir().unwrap();
    let root = common::root();
    let config = common::daemon::write_config(
        dir.path(),
        8.0,
        true,
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[[server.tenants]]\nname = \"bank-b\"\ntoken_sha256 = \"{}\"",
            callguard::grpc::token_sha256(TOKEN_B)
        ),
    );
    let daemon = Daemon::start(&config, &[], &["gRPC", "operations HTTP"]);
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("supervisor-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();

    let mut browser = Command::new("node")
        .arg(root.join("tests/browser/supervisor.mjs"))
        .arg(format!("http://{}", daemon.addr("operations HTTP")))
        .args([TOKEN_A, TOKEN_B])
        .arg(&shots)
        .env(
            "PLAYWRIGHT_CORE",
            root.join(".deps/node/node_modules/playwright-core"),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("node (run scripts/setup.sh for playwright-core and chromium)");
    let (tx, lines) = mpsc::channel::<String>();
    let out = BufReader::new(browser.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || {
        lines
            .recv_timeout(Duration::from_secs(240))
            .expect("the browser script stopped early (its reason is on stderr above)")
    };
    assert_eq!(next(), "READY");
    let url = daemon.grpc_url();
    let caller = std::thread::spawn(move || stream_switch_call(url));
    let acked = next();
    let alert_id = acked.strip_prefix("ACKED ").expect("ACKED <id>").to_owned();
    assert_eq!(next(), "DONE");
    assert!(
        browser.wait().unwrap().success(),
        "the browser script failed"
    );
    caller.join().unwrap();

    // The acknowledgement is in the alert log, beside the alert.
    let log = AlertLog::open(&dir.path().join("alerts.db")).unwrap();
    let alerts = log.all_after(0, 100).unwrap();
    let acked = alerts
        .iter()
        .find(|a| a.id == alert_id)
        .expect("the acknowledged alert is logged");
    assert_eq!(acked.call_id, "sup-1");
    let ack = acked.acknowledged.as_ref().expect("acknowledged");
    assert_eq!(ack.by, "supervisor-1");
    assert_eq!(ack.note.as_str(), "called the customer back on file");
    for step in [
        "1-login",
        "2-call-live",
        "3-call-red",
        "4-call-detail",
        "5-acknowledged",
        "6-other-tenant",
    ] {
        let png = shots.join(format!("{step}.png"));
        assert!(
            std::fs::metadata(&png).is_ok_and(|m| m.len() > 1000),
            "{} missing",
            png.display()
        );
    }
    assert!(daemon.stop());
}
