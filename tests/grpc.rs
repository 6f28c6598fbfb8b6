//! The gRPC face, in process over a real loopback port, with the project's own client:
//! verdicts on real recordings through G.711, alert streams with replay and lag catch-up,
//! tenants and tokens, malformed frames, limits, call control, health, reflection and TLS.

mod common;

use std::time::Duration;

use callguard::audio::g711::Law;
use callguard::grpc::proto as pb;
use callguard::guard::FeedItem;
use common::grpc::*;
use tokio::time::timeout;
use tonic::Code;

const PATIENCE: Duration = Duration::from_secs(20);

fn ms(samples: usize, rate: u32) -> u64 {
    samples as u64 * 1000 / rate as u64
}

async fn next_alert(stream: &mut tonic::Streaming<pb::AlertEvent>) -> pb::AlertEvent {
    timeout(PATIENCE, stream.message())
        .await
        .expect("an alert event in time")
        .unwrap()
        .expect("the alert stream is open")
}

fn alert(e: pb::AlertEvent) -> pb::Alert {
    match e.event {
        Some(pb::alert_event::Event::Alert(a)) => a,
        other => panic!("expected an alert, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synthetic_voice_alerts_live_and_a_genuine_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(server_config(dir.path(), common::shipped_config())).await;
    let mut client = server.client(TOKEN_A).await;
    let mut alerts = client
        .stream_alerts(pb::AlertSubscription::default())
        .await
        .unwrap()
        .into_inner();

    let (genuine, rate) = decode("genuine_1_alaw.wav");
    let updates = stream_call(
        &mut client,
        open_frame("genuine-1", pb::Codec::G711Alaw, rate, 1),
        numbered(g711_frames(&genuine, rate, Law::ALaw)),
    )
    .await
    .unwrap();
    let s = summary_of(&updates);
    assert_eq!(s.verdict, pb::CallState::Genuine as i32, "{s:?}");
    assert!(alerts_of(&updates).is_empty());
    assert_eq!(
        s.frames_received,
        g711_frames(&genuine, rate, Law::ALaw).len() as u64
    );
    assert_eq!(
        (s.frames_rejected, s.frames_lost, s.windows_dropped),
        (0, 0, 0)
    );
    assert!(s.windows_scored >= 8, "{s:?}");

    let (synthetic, rate) = decode("synthetic_espeak_ulaw.wav");
    let updates = stream_call(
        &mut client,
        open_frame("clone-1", pb::Codec::G711Mulaw, rate, 1),
        numbered(g711_frames(&synthetic, rate, Law::MuLaw)),
    )
    .await
    .unwrap();
    let s = summary_of(&updates);
    assert_eq!(s.verdict, pb::CallState::Suspected as i32, "{s:?}");
    let on_call = alerts_of(&updates);
    assert_eq!(on_call.len(), 1, "{on_call:?}");
    assert!(matches!(
        updates[0].update,
        Some(pb::call_update::Update::Opened(_))
    ));

    // The subscriber hears the same alert, and only that one: the genuine call raised none.
    let a = alert(next_alert(&mut alerts).await);
    assert_eq!(a, on_call[0]);
    assert_eq!(a.call_id, "clone-1");
    assert_eq!(a.tenant, "bank-a");
    assert_eq!(a.kind, pb::AlertKind::SuspectedClone as i32);
    assert!(a.p_spoof >= a.threshold && a.sequence > 0 && !a.id.is_empty());
    assert!(!a.evidence.is_empty());
    assert_eq!(a.evidence.last().unwrap().end_ms, a.audio_ms);
    // Live: mid-call, before the clip's 8 s end (model 0.3.1 alerted at 4.9 s on this clip, 0.3.0
    // at 3.9 s, 0.2.0 at 1.6 s; 0.5.0's first alerts on the golden synthetic clips come at
    // 1.6-1.8 s; alert latency over many calls is measured by bench/load.rs).
    assert!(a.audio_ms <= 6_000, "first alert at {} ms", a.audio_ms);
    assert_eq!(a.metadata.as_ref().unwrap().ani, "+15550100");
    assert!(a.model.starts_with("callguard"));

    // Ended calls stay visible through GetCall, with their summary.
    let info = client
        .get_call(pb::GetCallRequest {
            call_id: "clone-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.state, pb::CallState::Ended as i32);
    assert_eq!(info.summary.unwrap(), s);
    assert_eq!(info.alerts, 1);
    assert!(
        client
            .list_calls(pb::ListCallsRequest {})
            .await
            .unwrap()
            .into_inner()
            .calls
            .is_empty()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_switches_to_a_clone_alerts_after_the_switch() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(server_config(dir.path(), common::shipped_config())).await;
    let mut client = server.client(TOKEN_A).await;
    // The shipped model on a real voice then a synthetic one. (It scores genuine_2.wav through
    // mu-law as a clone at 14 s, a false alert the detector issue tracks; the pipeline's switch
    // behaviour is checked model-independently below.)
    let (genuine, rate) = decode("genuine_1.wav");
    let (clone, clone_rate) = decode("synthetic_espeak_ulaw.wav");
    assert_eq!(rate, clone_rate);
    let switch_ms = ms(genuine.len(), rate);
    let audio: Vec<f32> = genuine.iter().chain(&clone).copied().collect();
    let updates = stream_call(
        &mut client,
        open_frame("switch", pb::Codec::G711Mulaw, rate, 1),
        numbered(g711_frames(&audio, rate, Law::MuLaw)),
    )
    .await
    .unwrap();
    let alerts = alerts_of(&updates);
    assert!(!alerts.is_empty(), "no alert: {:?}", summary_of(&updates));
    let first = &alerts[0];
    assert_eq!(first.kind, pb::AlertKind::SuspectedClone as i32);
    // While the clone talks: how soon after the switch is the detector's (bench/README.md).
    let clone_ms = ms(clone.len(), rate);
    assert!(
        first.audio_ms > switch_ms && first.audio_ms <= switch_ms + clone_ms,
        "alert at {} ms, the clone talks from {switch_ms} to {} ms",
        first.audio_ms,
        switch_ms + clone_ms
    );
    server.stop().await;
}

/// Audio that makes the loudness test model alert and clear `cycles` times.
fn alternating(cycles: usize) -> (Vec<f32>, u32) {
    let (quiet, rate) = common::read_wav(&common::audio("genuine_2.wav"));
    let (loud, _) = common::read_wav(&common::audio("genuine_1.wav"));
    let quiet = common::at_level(&quiet, -30.0);
    let loud = common::at_level(&loud, -6.0);
    let mut audio = Vec::new();
    for _ in 0..cycles {
        audio.extend_from_slice(&loud);
        audio.extend_from_slice(&quiet);
        audio.extend_from_slice(&quiet);
    }
    (audio, rate)
}

fn pcm16(samples: &[f32], rate: u32) -> Vec<Vec<u8>> {
    samples
        .chunks(rate as usize / 50)
        .map(|c| {
            c.iter()
                .flat_map(|v| ((v.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
                .collect()
        })
        .collect()
}

async fn collect_alerts(
    client: &mut Client,
    after: Option<u64>,
    n: usize,
) -> (Vec<pb::Alert>, Vec<pb::Lag>) {
    let mut stream = client
        .stream_alerts(pb::AlertSubscription {
            after_sequence: after,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut alerts, mut lags) = (Vec::new(), Vec::new());
    while alerts.len() < n {
        match next_alert(&mut stream).await.event.unwrap() {
            pb::alert_event::Event::Alert(a) => alerts.push(a),
            pb::alert_event::Event::Lag(l) => lags.push(l),
        }
    }
    (alerts, lags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_subscriber_resumes_without_missing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(server_config(dir.path(), common::loudness_config())).await;
    let mut client = server.client(TOKEN_A).await;
    let (audio, rate) = alternating(3);
    let mut total = 0;
    for call in ["first", "second"] {
        let updates = stream_call(
            &mut client,
            open_frame(call, pb::Codec::Pcm16le, rate, 1),
            numbered(pcm16(&audio, rate)),
        )
        .await
        .unwrap();
        let kinds: Vec<_> = alerts_of(&updates).iter().map(|a| a.kind).collect();
        assert_eq!(kinds.len(), 6, "{call}: {kinds:?}");
        total += kinds.len();
    }
    // Everything, from the start of the log.
    let (all, lags) = collect_alerts(&mut client, Some(0), total).await;
    assert!(lags.is_empty());
    assert!(all.windows(2).all(|w| w[0].sequence < w[1].sequence));
    // A subscriber that saw the first four and reconnects gets exactly the rest.
    let (head, _) = collect_alerts(&mut client, Some(0), 4).await;
    assert_eq!(head, all[..4]);
    let (tail, _) = collect_alerts(&mut client, Some(head[3].sequence), total - 4).await;
    assert_eq!(tail, all[4..]);
    // Filters: one call, and only suspected clones (WARNING and above).
    let mut only = client
        .stream_alerts(pb::AlertSubscription {
            call_id: "second".into(),
            min_severity: pb::Severity::Warning as i32,
            after_sequence: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        let a = alert(next_alert(&mut only).await);
        assert_eq!(
            (a.call_id.as_str(), a.kind),
            ("second", pb::AlertKind::SuspectedClone as i32)
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_told_it_lagged_and_is_caught_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = server_config(dir.path(), common::loudness_config());
    config.server.subscriber_queue = 1;
    let server = TestServer::start(config).await;
    let guard = server.guard.clone();
    // Two subscribers from before the first call; the slow one reads nothing meanwhile.
    let mut slow = guard.alerts("bank-a", Default::default(), None).unwrap();
    let mut fast = guard.alerts("bank-a", Default::default(), None).unwrap();
    let mut client = server.client(TOKEN_A).await;
    let (audio, rate) = alternating(3);
    let mut decided = Vec::new();
    let mut slow_got = Vec::new();
    for call in ["busy-1", "busy-2"] {
        let updates = stream_call(
            &mut client,
            open_frame(call, pb::Codec::Pcm16le, rate, 1),
            numbered(pcm16(&audio, rate)),
        )
        .await
        .unwrap();
        let on_call: Vec<u64> = alerts_of(&updates).iter().map(|a| a.sequence).collect();
        assert_eq!(on_call.len(), 6);
        decided.extend(on_call);
        // Five of the six overflowed the slow subscriber's queue of one: it is told so, and
        // gets all six anyway, from the log, once each.
        let mut lags = Vec::new();
        while slow_got.len() < decided.len() || lags.is_empty() {
            match timeout(PATIENCE, slow.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            {
                FeedItem::Alert(a) => slow_got.push(a.sequence),
                FeedItem::Lag {
                    resume_after,
                    overflowed,
                } => lags.push((resume_after, overflowed)),
            }
        }
        assert_eq!(lags.len(), 1, "{call}: {lags:?}");
        assert_eq!(lags[0].1, 5, "{call}: {lags:?}");
        assert_eq!(slow_got, decided, "{call}: missed or repeated alerts");
    }
    assert!(
        timeout(Duration::from_millis(300), slow.next())
            .await
            .is_err(),
        "nothing more was decided"
    );
    // The pipeline and the other subscriber were not held back by the slow one.
    let mut fast_got = Vec::new();
    while fast_got.len() < decided.len() {
        match timeout(PATIENCE, fast.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            FeedItem::Alert(a) => fast_got.push(a.sequence),
            FeedItem::Lag { .. } => {}
        }
    }
    assert_eq!(fast_got, decided);
    drop((slow, fast));
    server.stop().await;
}

/// A peer that keeps presenting unknown tokens is refused for a while without its token being
/// read (a right one included), and both are counted for /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_keeps_failing_authentication_is_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(server_config(dir.path(), common::loudness_config())).await;
    let mut good = server.client(TOKEN_A).await;
    good.list_calls(pb::ListCallsRequest {}).await.unwrap();
    let mut guesser = server.client("guess").await;
    let burst = callguard::grpc::auth::FailedAuth::BURST as u64;
    for _ in 0..burst {
        let err = guesser
            .list_calls(pb::ListCallsRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let err = guesser
        .list_calls(pb::ListCallsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    let err = good.list_calls(pb::ListCallsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "same address: {err}");
    let auth = &server.guard.metrics().auth;
    assert_eq!(
        auth.failed.load(std::sync::atomic::Ordering::Relaxed),
        burst
    );
    assert_eq!(auth.throttled.load(std::sync::atomic::Ordering::Relaxed), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_and_tenants_see_only_their_calls() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(server_config(dir.path(), common::loudness_config())).await;
    let url = format!("http://{}", server.addr);
    for token in ["", "not-a-token"] {
        let mut c = client(&url, token).await;
        let err = c.list_calls(pb::ListCallsRequest {}).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}");
        let err = c
            .stream_alerts(pb::AlertSubscription::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let mut a = server.client(TOKEN_A).await;
    let mut b = server.client(TOKEN_B).await;
    let mut b_alerts = b
        .stream_alerts(pb::AlertSubscription {
            after_sequence: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // A call of tenant A that stays open (and suspected: loud all through) while B looks.
    let (audio, rate) = common::read_wav(&common::audio("genuine_1.wav"));
    let audio = common::at_level(&audio, -6.0);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(open_frame("a-call", pb::Codec::Pcm16le, rate, 1))
        .await
        .unwrap();
    let frames = pcm16(&audio, rate);
    let feeder = {
        let tx = tx.clone();
        tokio::spawn(async move {
            for (i, f) in frames.into_iter().enumerate() {
                tx.send(audio_frame(i as u64, f)).await.unwrap();
            }
        })
    };
    let mut a_updates = a
        .stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Wait for A's alert, so the call is known to be live and alerting.
    loop {
        let u = timeout(PATIENCE, a_updates.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(pb::call_update::Update::Alert(_)) = u.update {
            break;
        }
    }
    let listed = a
        .list_calls(pb::ListCallsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.calls.len(), 1);
    assert_eq!(listed.calls[0].call_id, "a-call");
    assert_eq!(listed.calls[0].state, pb::CallState::Suspected as i32);
    assert!(!listed.calls[0].recent_windows.is_empty());
    assert!(
        b.list_calls(pb::ListCallsRequest {})
            .await
            .unwrap()
            .into_inner()
            .calls
            .is_empty()
    );
    let req = || pb::GetCallRequest {
        call_id: "a-call".into(),
    };
    assert_eq!(b.get_call(req()).await.unwrap_err().code(), Code::NotFound);
    let end = || pb::EndCallRequest {
        call_id: "a-call".into(),
    };
    assert_eq!(b.end_call(end()).await.unwrap_err().code(), Code::NotFound);
    // B may use the same call id for its own call.
    let updates = stream_call(
        &mut b,
        open_frame("a-call", pb::Codec::Pcm16le, rate, 1),
        numbered(pcm16(&audio[..rate as usize], rate)),
    )
    .await
    .unwrap();
    assert!(alerts_of(&updates).is_empty());
    // A ends its call through EndCall; its stream ends with the summary.
    a.end_call(end()).await.unwrap();
    feeder.await.unwrap();
    drop(tx);
    let mut last = None;
    while let Some(u) = timeout(PATIENCE, a_updates.message())
        .await
        .unwrap()
        .unwrap()
    {
        last = Some(u);
    }
    assert!(matches!(
        last.unwrap().update,
        Some(pb::call_update::Update::Ended(_))
    ));
    assert_eq!(
        a.get_call(req()).await.unwrap().into_inner().tenant,
        "bank-a"
    );
    // B's subscription never carried A's alerts.
    assert!(
        timeout(Duration::from_millis(500), b_alerts.message())
            .await
            .is_err(),
        "tenant B received an alert"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_openings_are_refused_and_bad_frames_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = server_config(dir.path(), common::loudness_config());
    config.server.max_frame_ms = 100;
    let server = TestServer::start(config).await;
    let mut c = server.client(TOKEN_A).await;
    let refused = |open: pb::AudioFrame| {
        let mut c = c.clone();
        async move { stream_call(&mut c, open, vec![]).await.unwrap_err().code() }
    };
    let mut bad_codec = open_frame("x", pb::Codec::Pcm16le, 8_000, 1);
    if let Some(pb::audio_frame::Frame::Open(o)) = &mut bad_codec.frame {
        o.codec = 99;
    }
    assert_eq!(refused(bad_codec).await, Code::InvalidArgument);
    for (rate, channels) in [(1, 1), (1_000_000_000, 1), (8_000, 0), (8_000, 99)] {
        let open = open_frame("x", pb::Codec::Pcm16le, rate, channels);
        assert_eq!(
            refused(open).await,
            Code::InvalidArgument,
            "{rate} Hz, {channels} ch"
        );
    }
    assert_eq!(
        refused(open_frame(
            "bad id with spaces",
            pb::Codec::Pcm16le,
            8_000,
            1
        ))
        .await,
        Code::InvalidArgument
    );
    assert_eq!(
        refused(audio_frame(0, vec![0; 320])).await,
        Code::InvalidArgument
    );

    // A good call with bad frames in it: each is rejected, the rest are scored.
    let (audio, rate) = alternating(1);
    let mut frames = numbered(pcm16(&audio, rate));
    let n = frames.len() as u64;
    let extra = [
        audio_frame(n, vec![]),                 // empty
        audio_frame(n + 1, vec![0; 8_000 * 2]), // 1 s, over max_frame_ms
        audio_frame(n + 2, vec![0; 3]),         // half a sample
        audio_frame(5, vec![0; 320]),           // out of order
        pb::AudioFrame { frame: None },         // neither open nor audio
        open_frame("again", pb::Codec::Pcm16le, 8_000, 1),
    ];
    let at = frames.len() / 2;
    frames.remove(at + 1); // a gap: one frame never arrives
    frames.splice(at..at, extra);
    let updates = stream_call(
        &mut c,
        open_frame("good", pb::Codec::Pcm16le, rate, 1),
        frames,
    )
    .await
    .unwrap();
    let rejected = rejections_of(&updates);
    assert_eq!(rejected.len(), 6, "{rejected:?}");
    assert!(
        rejected
            .iter()
            .all(|r| r.code == Code::InvalidArgument as i32)
    );
    let s = summary_of(&updates);
    // Rejected frames do not move the sequence on; the missing one counts as lost.
    assert_eq!(s.frames_received, n - 1 + 4, "{s:?}");
    assert_eq!(s.frames_rejected, 4);
    assert_eq!(s.frames_lost, 1);
    assert_eq!(alerts_of(&updates).len(), 2, "{s:?}");
    // The daemon is unharmed.
    assert!(c.list_calls(pb::ListCallsRequest {}).await.is_ok());
    server.stop().await;
}

/// Each call is screened at its channel class's threshold: the class comes from the codec and
/// rate, or from the opening frame, and shows in `CallOpened`, alerts, the summary and `GetCall`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_classes_pick_each_calls_threshold() {
    use callguard::verdict::ChannelClass;
    let dir = tempfile::tempdir().unwrap();
    let mut config = server_config(dir.path(), common::loudness_config());
    for (class, t) in [
        (ChannelClass::Wideband, 0.7),
        (ChannelClass::NarrowbandG711, 0.6),
        (ChannelClass::NarrowbandLossy, 0.55),
    ] {
        config.verdict.enter_thresholds.set(class, Some(t));
    }
    let server = TestServer::start(config).await;
    let mut c = server.client(TOKEN_A).await;
    let opened = |updates: &[pb::CallUpdate]| match &updates[0].update {
        Some(pb::call_update::Update::Opened(o)) => (o.channel_class, o.enter_threshold),
        other => panic!("first update is not CallOpened: {other:?}"),
    };
    let with_class = |mut open: pb::AudioFrame, class: pb::ChannelClass| {
        if let Some(pb::audio_frame::Frame::Open(o)) = &mut open.frame {
            o.channel_class = class as i32;
        }
        open
    };
    for (id, codec, rate, class, want, threshold) in [
        (
            "mu",
            pb::Codec::G711Mulaw,
            8_000,
            pb::ChannelClass::Unspecified,
            pb::ChannelClass::NarrowbandG711,
            0.6,
        ),
        (
            "pcm-8k",
            pb::Codec::Pcm16le,
            8_000,
            pb::ChannelClass::Unspecified,
            pb::ChannelClass::NarrowbandG711,
            0.6,
        ),
        (
            "pcm-16k",
            pb::Codec::Pcm16le,
            16_000,
            pb::ChannelClass::Unspecified,
            pb::ChannelClass::Wideband,
            0.7,
        ),
        (
            "told-g711",
            pb::Codec::F32le,
            48_000,
            pb::ChannelClass::NarrowbandG711,
            pb::ChannelClass::NarrowbandG711,
            0.6,
        ),
    ] {
        let updates = stream_call(
            &mut c,
            with_class(open_frame(id, codec, rate, 1), class),
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(opened(&updates), (want as i32, threshold), "{id}");
        let s = summary_of(&updates);
        assert_eq!(
            (s.channel_class, s.enter_threshold),
            (want as i32, Some(threshold)),
            "{id}"
        );
    }

    // A lossy call, as the media server says: its alerts cross the lossy threshold.
    let (audio, rate) = alternating(1);
    let open = with_class(
        open_frame("amr", pb::Codec::Pcm16le, rate, 1),
        pb::ChannelClass::NarrowbandLossy,
    );
    let updates = stream_call(&mut c, open, numbered(pcm16(&audio, rate)))
        .await
        .unwrap();
    assert_eq!(
        opened(&updates),
        (pb::ChannelClass::NarrowbandLossy as i32, 0.55)
    );
    let alerts = alerts_of(&updates);
    let suspected: Vec<_> = alerts
        .iter()
        .filter(|a| a.kind == pb::AlertKind::SuspectedClone as i32)
        .collect();
    assert!(!suspected.is_empty(), "{alerts:?}");
    assert!(
        suspected.iter().all(|a| a.threshold == 0.55),
        "{suspected:?}"
    );
    let info = c
        .get_call(pb::GetCallRequest {
            call_id: "amr".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.channel_class, info.enter_threshold),
        (pb::ChannelClass::NarrowbandLossy as i32, Some(0.55))
    );

    let mut bad = open_frame("bad-class", pb::Codec::Pcm16le, 8_000, 1);
    if let Some(pb::audio_frame::Frame::Open(o)) = &mut bad.frame {
        o.channel_class = 9;
    }
    let err = stream_call(&mut c, bad, vec![]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("channel_class"), "{err:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = server_config(dir.path(), common::loudness_config());
    config.server.max_calls_per_tenant = 1;
    config.server.max_subscribers = 1;
    config.server.max_speed = 1.0;
    config.server.burst_ms = 1_000;
    let server = TestServer::start(config).await;
    let mut a = server.client(TOKEN_A).await;
    let _subscriber = a
        .stream_alerts(pb::AlertSubscription::default())
        .await
        .unwrap();
    let err = a
        .stream_alerts(pb::AlertSubscription::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // One live call per tenant: the second is refused while the first is open.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(open_frame("one", pb::Codec::Pcm16le, 8_000, 1))
        .await
        .unwrap();
    let mut first = a
        .stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    first.message().await.unwrap().unwrap(); // opened
    let err = stream_call(
        &mut a,
        open_frame("two", pb::Codec::Pcm16le, 8_000, 1),
        vec![],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // Faster than real time beyond the burst: frames are refused, the call goes on.
    for seq in 0..100u64 {
        tx.send(audio_frame(seq, vec![0; 320])).await.unwrap(); // 20 ms each
    }
    drop(tx);
    let mut updates = Vec::new();
    while let Some(u) = first.message().await.unwrap() {
        updates.push(u);
    }
    let rejected = rejections_of(&updates);
    assert!(!rejected.is_empty());
    assert!(
        rejected
            .iter()
            .all(|r| r.code == Code::ResourceExhausted as i32)
    );
    let s = summary_of(&updates);
    assert_eq!(s.frames_received, 100);
    assert_eq!(s.frames_rejected, rejected.len() as u64);
    // The 1 s burst (50 frames) is always accepted; the rest only as real time passes.
    let accepted = 100 - s.frames_rejected;
    assert!((50..100).contains(&accepted), "{accepted} accepted");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_an_unknown_device_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(server_config(dir.path(), common::loudness_config())).await;
    let mut a = server.client(TOKEN_A).await;
    let err = a
        .bind_device(pb::BindDeviceRequest {
            device: "no such device 7f3a".into(),
            call_id: "desk-1".into(),
            caller_channel: None,
            metadata: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        a.list_calls(pb::ListCallsRequest {})
            .await
            .unwrap()
            .into_inner()
            .calls
            .is_empty()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_without_a_token() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(server_config(dir.path(), common::loudness_config())).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let check = |channel: tonic::transport::Channel| async move {
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "callguard.v1.CallGuard".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    };
    assert_eq!(check(channel.clone()).await, ServingStatus::Serving as i32);
    // The health service follows readiness (asynchronously): an alert log that refuses writes
    // is not ready, and ready again when it takes them.
    let settles_at = |want: ServingStatus| {
        let channel = channel.clone();
        async move {
            let mut status = check(channel.clone()).await;
            for _ in 0..100 {
                if status == want as i32 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                status = check(channel.clone()).await;
            }
            status
        }
    };
    server.guard.readiness().set_store_writable(false);
    assert_eq!(
        settles_at(ServingStatus::NotServing).await,
        ServingStatus::NotServing as i32
    );
    server.guard.readiness().set_store_writable(true);
    assert_eq!(
        settles_at(ServingStatus::Serving).await,
        ServingStatus::Serving as i32
    );
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"callguard.v1.CallGuard"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_is_kept_with_the_alert_and_only_its_tenant_may_give_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(server_config(dir.path(), common::shipped_config())).await;
    let mut a = server.client(TOKEN_A).await;
    let (clone, rate) = decode("synthetic_espeak_ulaw.wav");
    let updates = stream_call(
        &mut a,
        open_frame("ack-1", pb::Codec::G711Mulaw, rate, 1),
        numbered(g711_frames(&clone, rate, Law::MuLaw)),
    )
    .await
    .unwrap();
    let alert = alerts_of(&updates).remove(0);
    assert!(alert.acknowledgement.is_none());
    let ack = |by: &str, note: &str| pb::AcknowledgeAlertRequest {
        alert_id: alert.id.clone(),
        by: by.into(),
        note: note.into(),
    };
    let mut b = server.client(TOKEN_B).await;
    let err = b.acknowledge_alert(ack("eve", "")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "another tenant's alert");
    let err = a.acknowledge_alert(ack("  ", "x")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let given = a
        .acknowledge_alert(ack("supervisor-3", "called back, card 4111 1111 1111 1111"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(given.by, "supervisor-3");
    assert!(
        !given.note.contains("4111"),
        "notes are redacted: {}",
        given.note
    );
    // Every client replaying the log sees it with the alert.
    let mut replay = server
        .client(TOKEN_A)
        .await
        .stream_alerts(pb::AlertSubscription {
            after_sequence: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = match timeout(Duration::from_secs(10), replay.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .event
    {
        Some(pb::alert_event::Event::Alert(x)) => x,
        other => panic!("{other:?}"),
    };
    assert_eq!(first.id, alert.id);
    assert_eq!(first.acknowledgement, Some(given));
    server.stop().await;
}
