//! A voice that changes mid-call raises `VOICE_CHANGED` soon after the change; one voice all
//! along raises none. Calls go through G.711 mu-law at 8 kHz, as a phone line would carry them,
//! pushed as 20 ms PCM frames; the speaker encoder is the shipped `models/speaker.onnx` and the
//! detector the test-only loudness graph (the clone score does not matter here).

mod common;

use std::sync::atomic::AtomicBool;

use callguard::audio::SourceFormat;
use callguard::audio::g711::{Law, decode_into, encode_into};
use callguard::audio::push::{self, Encoding};
use callguard::pipeline::{CallSummary, Engine, EngineEvent, drive};
use callguard::verdict::AlertKind;

const RATE: u32 = 8_000;

fn engine() -> Engine {
    let mut config = common::loudness_config();
    config.voice.speaker_model = Some(common::root().join("models/speaker.onnx"));
    Engine::start(&config).unwrap()
}

/// A test WAV at 8 kHz (linear interpolation from its rate) through mu-law and back, at -20 dBFS.
fn phone(name: &str) -> Vec<f32> {
    let (x, rate) = common::read_wav(&common::audio(name));
    let x = common::at_level(&x, -20.0);
    let n = (x.len() as u64 * RATE as u64 / rate as u64) as usize;
    let narrow: Vec<f32> = (0..n)
        .map(|i| {
            let t = i as f64 * rate as f64 / RATE as f64;
            let (k, f) = (t as usize, (t.fract()) as f32);
            let a = x[k.min(x.len() - 1)];
            let b = x[(k + 1).min(x.len() - 1)];
            a + (b - a) * f
        })
        .collect();
    let (mut codes, mut out) = (Vec::new(), Vec::new());
    encode_into(Law::MuLaw, &narrow, &mut codes);
    decode_into(Law::MuLaw, &codes, &mut out);
    out
}

fn call(engine: &Engine, id: &str, samples: &[f32]) -> CallSummary {
    let format = SourceFormat {
        sample_rate: RATE,
        channels: 1,
    };
    let (handle, mut source) = push::channel(format, Encoding::Pcm16Le, 64).unwrap();
    let call = common::open_mono_call(engine, id, format, true);
    let mut vad = engine.vad().unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| drive(call, &mut vad, &mut source, &stop).unwrap());
        for chunk in samples.chunks(RATE as usize / 50) {
            let bytes: Vec<u8> = chunk
                .iter()
                .flat_map(|v| ((v.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
                .collect();
            while let Err(push::PushError::Full) = handle.push_bytes(&bytes) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        drop(handle);
    });
    loop {
        match engine.events().recv().unwrap() {
            EngineEvent::Ended(s) if s.call_id == id => return *s,
            _ => {}
        }
    }
}

/// Runs the `callguard` binary with `args` on a config in `dir` (the shipped detector and
/// speaker encoder, a store in `dir`, no transcription): success, stdout, stderr.
fn cli(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let config = dir.join("callguard.toml");
    if !config.exists() {
        std::fs::write(
            &config,
            format!(
                "[speech]\nvad_model = \"{}\"\n[detector]\nmodel = \"{}\"\n[store]\npath = \"{}\"\n\
                 [transcribe]\nenabled = false\n[voice]\nspeaker_model = \"{}\"\n",
                common::root().join(".deps/silero_vad.onnx").display(),
                common::root().join("models/detector.onnx").display(),
                dir.join("store.db").display(),
                common::root().join("models/speaker.onnx").display(),
            ),
        )
        .unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callguard"))
        .arg("--config")
        .arg(&config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn changes(s: &CallSummary) -> Vec<(u64, f32)> {
    s.alerts
        .iter()
        .filter(|a| a.kind == AlertKind::VoiceChanged)
        .map(|a| (a.audio_ms, a.voice_similarity.unwrap()))
        .collect()
}

#[test]
fn one_voice_all_along_never_changes() {
    let engine = engine();
    let same: Vec<f32> = ["genuine_3.wav", "genuine_1.wav", "genuine_2.wav"]
        .iter()
        .flat_map(|n| phone(n))
        .collect();
    let s = call(&engine, "one-voice", &same);
    assert!(s.windows_scored >= 40, "{} windows", s.windows_scored);
    assert_eq!(changes(&s), [], "{:?}", s.alerts);
}

#[test]
fn another_voice_taking_over_is_reported_within_three_seconds() {
    let engine = engine();
    let human: Vec<f32> = ["genuine_3.wav", "genuine_1.wav"]
        .iter()
        .flat_map(|n| phone(n))
        .collect();
    let switch_ms = human.len() as u64 * 1000 / RATE as u64;
    let mut audio = human;
    audio.extend(phone("synthetic_espeak.wav"));
    let s = call(&engine, "takeover", &audio);
    let found = changes(&s);
    assert_eq!(found.len(), 1, "one change: {found:?}");
    let (at, similarity) = found[0];
    assert!(
        at > switch_ms && at <= switch_ms + 3_000,
        "reported at {at} ms, the voice changed at {switch_ms} ms"
    );
    assert!(similarity < 0.65, "{similarity}");
    // The call's state is the clone detector's, not the change's.
    let change = s
        .alerts
        .iter()
        .find(|a| a.kind == AlertKind::VoiceChanged)
        .unwrap();
    assert!((change.risk - (1.0 - (1.0 - change.p_spoof).powi(2))).abs() < 1e-4);
}

/// `callguard allow-voice` then `callguard scan --tenant`: an "IVR" voice fingerprinted from one
/// recording is set aside on another recording of it (no alert, the timeline marks why), while
/// an unlisted synthetic voice still alerts, and other tenants' calls are not excused.
#[test]
fn an_allowed_ivr_voice_raises_no_alert_and_an_unlisted_one_still_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let say = |file: &str, text: &str| {
        let ok = std::process::Command::new("espeak-ng")
            .args(["-v", "en-us+m3", "-s", "150", "-w"])
            .arg(d.join(file))
            .arg(text)
            .status()
            .expect("espeak-ng is installed by scripts/setup.sh");
        assert!(ok.success());
    };
    say(
        "fingerprint.wav",
        "Thank you for calling First National Bank. Your call is important to us. For balances \
         and recent transactions, press one. To report a lost or stolen card, press two. For \
         all other enquiries, please stay on the line and an agent will be with you shortly.",
    );
    say(
        "prompt.wav",
        "Welcome back. Please enter your account number followed by the hash key. If you do \
         not know your account number, press star to speak to one of our advisers.",
    );
    say("short.wav", "Press one.");
    let callguard = |args: &[&str]| cli(d, args);
    let path = |f: &str| d.join(f).display().to_string();
    // Too little speech is refused, with the reason.
    let (ok, _, err) = callguard(&[
        "allow-voice",
        "ivr",
        &path("short.wav"),
        "--tenant",
        "bank-a",
    ]);
    assert!(!ok && err.contains("needs at least 5 s"), "{err}");
    let (ok, out, err) = callguard(&[
        "allow-voice",
        "ivr",
        &path("fingerprint.wav"),
        "--tenant",
        "bank-a",
    ]);
    assert!(ok, "{err}");
    let made: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(made["speech_s"].as_f64().unwrap() >= 5.0, "{made}");
    let (ok, out, _) = callguard(&["voices", "--tenant", "bank-a"]);
    assert!(
        ok && out.contains("\"ivr\"") && !out.contains("embedding"),
        "{out}"
    );

    let flite = common::audio("synthetic_flite.wav").display().to_string();
    let scan = |tenant: &str| -> serde_json::Value {
        let (ok, out, err) = callguard(&[
            "scan",
            "--json",
            "--tenant",
            tenant,
            &path("prompt.wav"),
            &flite,
        ]);
        assert!(ok || out.contains("\"files\""), "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let a = scan("bank-a");
    let (prompt, other) = (&a["files"][0], &a["files"][1]);
    assert_eq!(prompt["alerts"].as_array().unwrap().len(), 0, "{prompt}");
    let marked = prompt["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["allowed_voice"] == true)
        .count();
    assert!(marked >= 5, "the timeline says why: {prompt}");
    assert!(prompt["allowed_voice_windows"]["ivr"].as_u64().unwrap() >= 5);
    assert!(
        !other["alerts"].as_array().unwrap().is_empty(),
        "the unlisted voice alerts: {other}"
    );
    // Another tenant has no allowed voices: the same prompt alerts there.
    let b = scan("bank-b");
    assert!(
        !b["files"][0]["alerts"].as_array().unwrap().is_empty(),
        "{}",
        b["files"][0]
    );
}

/// `callguard enroll` then `scan --claim`: the protected person's own voice raises no
/// `IDENTITY_MISMATCH`, another person claiming to be them does (CRITICAL, with the similarity),
/// and a synthetic voice claiming them is a clone and a mismatch.
#[test]
fn a_claimed_identity_is_checked_against_the_enrolled_voice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let callguard = |args: &[&str]| cli(d, args);
    let audio = |f: &str| common::audio(f).display().to_string();
    // 30 s of speech are needed; one short prompt file is refused.
    let (ok, _, err) = callguard(&[
        "enroll",
        "allison",
        &audio("genuine_2.wav"),
        "--tenant",
        "bank-a",
    ]);
    assert!(!ok && err.contains("needs at least 30 s"), "{err}");
    let (ok, _, err) = callguard(&[
        "enroll",
        "allison",
        &audio("prompts.wav"),
        "--tenant",
        "bank-a",
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = callguard(&[
        "scan",
        "--json",
        "--tenant",
        "bank-a",
        "--claim",
        "allison",
        &audio("genuine_1.wav"),
        &audio("other_person.wav"),
        &audio("synthetic_espeak.wav"),
    ]);
    assert!(ok || out.contains("\"files\""), "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kinds = |i: usize| -> Vec<String> {
        doc["files"][i]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        !kinds(0).contains(&"identity_mismatch".into()),
        "the person herself: {}",
        doc["files"][0]
    );
    assert!(
        kinds(1).contains(&"identity_mismatch".into()),
        "another person: {}",
        doc["files"][1]
    );
    let mismatch = doc["files"][1]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "identity_mismatch")
        .unwrap();
    assert!(
        mismatch["voice_similarity"].as_f64().unwrap() < 0.7,
        "{mismatch}"
    );
    assert!(
        kinds(2).contains(&"suspected_clone".into()),
        "{}",
        doc["files"][2]
    );
    assert!(
        kinds(2).contains(&"identity_mismatch".into()),
        "{}",
        doc["files"][2]
    );
    // An unknown claim is an error, not a silent pass.
    let (ok, _, err) = callguard(&[
        "scan",
        "--tenant",
        "bank-a",
        "--claim",
        "nobody",
        &audio("genuine_1.wav"),
    ]);
    assert!(!ok && err.contains("no protected voice"), "{err}");
}

/// Over gRPC on the daemon: `EnrollVoice` keeps a protected voice from WAV bytes (refusing
/// too little speech and what is not audio), and `ClaimIdentity` on a live call makes another
/// person's voice raise `IDENTITY_MISMATCH`, counting the speech before the claim too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_voice_and_claim_identity_over_grpc() {
    use callguard::grpc::proto as pb;
    use common::grpc::*;
    let dir = tempfile::tempdir().unwrap();
    let speaker = common::root().join("models/speaker.onnx");
    let config = common::daemon::write_config(
        dir.path(),
        1000.0,
        false,
        &format!("[voice]\nspeaker_model = \"{}\"", speaker.display()),
    );
    let daemon = common::daemon::Daemon::start(&config, &[], &["gRPC"]);
    let mut client = client(&daemon.grpc_url(), TOKEN_A).await;
    let enroll = |file: &str, name: &str| pb::EnrollVoiceRequest {
        name: name.into(),
        kind: pb::VoiceKind::Protected as i32,
        recordings: vec![std::fs::read(common::audio(file)).unwrap()],
    };
    let short = client
        .enroll_voice(enroll("genuine_2.wav", "allison"))
        .await
        .unwrap_err();
    assert_eq!(short.code(), tonic::Code::InvalidArgument, "{short}");
    let mut junk = enroll("genuine_2.wav", "allison");
    junk.recordings = vec![b"not audio at all".to_vec()];
    let junk = client.enroll_voice(junk).await.unwrap_err();
    assert_eq!(junk.code(), tonic::Code::InvalidArgument, "{junk}");
    // The first 60 s of the prompts (960 kB at 8 kHz): within server.max_message_bytes.
    let mut long = enroll("prompts.wav", "allison");
    let wav = &long.recordings[0];
    let data = wav.windows(4).position(|w| w == b"data").unwrap() + 8;
    let cut_path = dir.path().join("minute.wav");
    let mut cut = hound::WavWriter::create(
        &cut_path,
        hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        },
    )
    .unwrap();
    for s in wav[data..].chunks_exact(2).take(8000 * 60) {
        cut.write_sample(i16::from_le_bytes([s[0], s[1]])).unwrap();
    }
    cut.finalize().unwrap();
    long.recordings = vec![std::fs::read(&cut_path).unwrap()];
    let made = client.enroll_voice(long).await.unwrap().into_inner();
    assert!(made.speech_seconds >= 30.0 && made.windows > 50, "{made:?}");

    // Another person's call; the claim comes 4 s in.
    let (x, rate) = decode("other_person.wav");
    let frames = numbered(g711_frames(&x, rate, callguard::audio::g711::Law::MuLaw));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
    tx.send(open_frame("impostor", pb::Codec::G711Mulaw, rate, 1))
        .await
        .unwrap();
    let mut updates = client.stream_audio(outbound).await.unwrap().into_inner();
    let mut frames = frames.into_iter();
    for f in frames.by_ref().take(200) {
        tx.send(f).await.unwrap();
    }
    let unknown = client
        .claim_identity(pb::ClaimIdentityRequest {
            call_id: "impostor".into(),
            identity: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    client
        .claim_identity(pb::ClaimIdentityRequest {
            call_id: "impostor".into(),
            identity: "allison".into(),
        })
        .await
        .unwrap();
    for f in frames {
        tx.send(f).await.unwrap();
    }
    drop(tx);
    while updates.message().await.unwrap().is_some() {}
    let mut alerts = client
        .stream_alerts(pb::AlertSubscription {
            call_id: "impostor".into(),
            after_sequence: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mismatch = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            if let Some(pb::alert_event::Event::Alert(a)) =
                alerts.message().await.unwrap().unwrap().event
                && a.kind == pb::AlertKind::IdentityMismatch as i32
            {
                return a;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "an IDENTITY_MISMATCH alert; the daemon said:\n{}",
            daemon.log.lock().unwrap().join("\n")
        )
    });
    assert_eq!(mismatch.severity, pb::Severity::Critical as i32);
    assert!(mismatch.voice_similarity.unwrap() < 0.7, "{mismatch:?}");
}
