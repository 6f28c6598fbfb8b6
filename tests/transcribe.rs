//! Transcription with the real Whisper tiny.en model (converted from PyPI by scripts/setup.sh):
//! word error rate on real recordings with known text, cues from a synthesized fraud request,
//! card numbers masked on every way out, and the CPU budget under many calls.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use callguard::audio::SourceFormat;
use callguard::audio::g711::Law;
use callguard::config::WhenFull;
use callguard::grpc::proto as pb;
use callguard::pipeline::{Engine, EngineEvent};
use callguard::transcribe::whisper::is_loop;
use callguard::transcribe::{SegmentResult, SpeechSegment, TranscriberPool, WhisperModel};
use common::assert_no_card;
use common::grpc::*;
use serde_json::Value;

fn scan(args: &[&str], files: &[&Path]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_callguard"))
        .args(args)
        .args(files)
        .current_dir(common::root())
        .env("CALLGUARD_LOG", "trace")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (stdout, stderr)
}

fn scan_json(files: &[&Path]) -> Value {
    let (stdout, _) = scan(&["scan", "--json"], files);
    serde_json::from_str(&stdout).unwrap()
}

fn transcript_text(file: &Value) -> String {
    file["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Lower-case words without punctuation; digits spelled out ("press 1" = "press one").
fn words(text: &str) -> Vec<String> {
    const DIGITS: [&str; 10] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    text.to_lowercase()
        .replace(['-', ';', ',', '.', '!', '?', ':'], " ")
        .split_whitespace()
        .flat_map(|w| {
            if w.chars().all(|c| c.is_ascii_digit()) {
                w.chars()
                    .map(|c| DIGITS[c as usize - '0' as usize].to_string())
                    .collect()
            } else {
                vec![
                    w.chars()
                        .filter(|c| c.is_alphanumeric() || *c == '\'')
                        .collect(),
                ]
            }
        })
        .filter(|w: &String| !w.is_empty())
        .collect()
}

/// Word error rate: word-level edit distance over the reference length.
fn wer(reference: &[String], hypothesis: &[String]) -> f64 {
    let mut row: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, h) in hypothesis.iter().enumerate() {
            let cost = usize::from(r != h);
            let next = (prev + cost).min(row[j] + 1).min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[hypothesis.len()] as f64 / reference.len() as f64
}

/// A missing model is a clear startup error, or a warning and no transcripts, as configured.
#[test]
fn a_missing_model_fails_or_disables_transcription_as_configured() {
    let mut config = common::transcribing_config();
    config.transcribe.model = "/nonexistent/ggml-tiny.en.bin".into();
    config.transcribe.on_missing = callguard::config::OnMissing::Error;
    let err = Engine::start(&config).err().expect("refuses to start");
    assert!(
        err.to_string().contains("/nonexistent/ggml-tiny.en.bin"),
        "{err}"
    );
    config.transcribe.on_missing = callguard::config::OnMissing::Warn;
    let engine = Engine::start(&config).unwrap();
    assert!(engine.transcribe_stats().is_none());
    engine.shutdown();
}

#[test]
fn wer_counts_substitutions_insertions_and_deletions() {
    let w = |s: &str| words(s);
    assert_eq!(wer(&w("press 1 now"), &w("Press one, now.")), 0.0);
    assert_eq!(wer(&w("a b c d"), &w("a x c")), 0.5);
    assert_eq!(wer(&w("a b"), &w("a b c d")), 1.0);
}

/// Sixteen Asterisk prompts (one human voice, 8 kHz telephone recordings, 108 s) with their
/// published text, as linear PCM and through G.711 mu-law, through the whole pipeline (VAD
/// segments, resampling, whisper): at most 15% word error rate on each.
#[test]
fn real_recordings_transcribe_within_15_percent_wer() {
    let reference = words(&std::fs::read_to_string(common::audio("prompts.txt")).unwrap());
    assert!(reference.len() > 250, "{} words", reference.len());
    let (pcm, ulaw) = (
        common::audio("prompts.wav"),
        common::audio("prompts_ulaw.wav"),
    );
    let doc = scan_json(&[&pcm, &ulaw]);
    for (name, file) in ["pcm", "mu-law"]
        .iter()
        .zip(doc["files"].as_array().unwrap())
    {
        let text = transcript_text(file);
        let rate = wer(&reference, &words(&text));
        eprintln!(
            "{name}: WER {:.1}% over {} words",
            rate * 100.0,
            reference.len()
        );
        assert!(rate <= 0.15, "{name}: WER {rate:.3}: {text}");
        let counts = &file["segment_counts"];
        assert_eq!(counts["skipped"], 0, "recorded audio is never skipped");
        assert_eq!(
            counts["transcribed"].as_u64().unwrap() + counts["no_speech"].as_u64().unwrap(),
            file["segments"].as_u64().unwrap()
        );
        // Segments are in call order, inside the call, and do not overlap.
        let segs = file["transcript"].as_array().unwrap();
        for pair in segs.windows(2) {
            assert!(pair[0]["end_ms"].as_u64() <= pair[1]["start_ms"].as_u64());
        }
        assert!(segs.last().unwrap()["end_ms"].as_u64().unwrap() <= 108_000);
    }
}

/// A synthesized fraud request raises the transfer, urgency and secrecy cues with the words
/// and time that raised them; a call's alerts carry a risk at least their clone score.
#[test]
fn a_synthesized_request_raises_its_cues_and_risk() {
    let doc = scan_json(&[&common::audio("request.wav")]);
    let file = &doc["files"][0];
    let segs = file["transcript"].as_array().unwrap();
    let cues: Vec<&Value> = segs
        .iter()
        .flat_map(|s| s["cues"].as_array().unwrap())
        .collect();
    let rules: Vec<&str> = cues.iter().map(|c| c["rule"].as_str().unwrap()).collect();
    for want in ["transfer", "urgency", "secrecy"] {
        assert!(
            rules.contains(&want),
            "{want} missing: {rules:?} in {segs:?}"
        );
    }
    for c in &cues {
        let text = c["text"].as_str().unwrap().to_lowercase();
        assert!(
            transcript_text(file).to_lowercase().contains(&text),
            "{text}"
        );
        assert!(c["end_ms"].as_u64() > c["start_ms"].as_u64());
    }
    for a in file["alerts"].as_array().unwrap() {
        assert!(a["risk"].as_f64().unwrap() >= a["p_spoof"].as_f64().unwrap() - 1e-6);
    }
}

#[test]
fn the_leak_check_catches_leaks() {
    for leak in [
        "my card is 4111 1111 1111 1111",
        "ends 1111-1111",
        "\"text\": \"four one one one\"",
    ] {
        let caught = std::panic::catch_unwind(|| assert_no_card(leak, "probe")).is_err();
        assert!(caught, "{leak:?} not caught");
    }
    assert_no_card("p_spoof 0.74111 at 4111 ms, masked [card]", "probe");
}

/// What whisper is known to loop on (digits read one by one, letters spelled one by one) and sound
/// that is not speech (20 s of silence, DTMF digits, music on hold), scanned as calls: no
/// transcript segment shows a repetition loop (a looping segment is decoded again and, if it
/// still loops, counted as unintelligible instead of shown), every speech segment is accounted
/// for, and no card number leaks.
#[test]
fn hostile_audio_never_shows_a_repetition_loop() {
    let names = [
        "card.wav",
        "letters.wav",
        "silence.wav",
        "dtmf.wav",
        "hold_music.wav",
    ];
    let paths: Vec<_> = names.iter().map(|n| common::audio(n)).collect();
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let (out, logs) = scan(&["scan", "--json"], &refs);
    let json: Value = serde_json::from_str(&out).unwrap();
    let files = json["files"].as_array().unwrap();
    assert_eq!(files.len(), names.len(), "{out}");
    let file = |name: &str| {
        files
            .iter()
            .find(|f| f["path"].as_str().is_some_and(|p| p.ends_with(name)))
            .unwrap_or_else(|| panic!("{name} not scanned: {out}"))
    };
    for name in names {
        let file = file(name);
        let segments = file["transcript"].as_array().unwrap();
        for segment in segments {
            let text = segment["text"].as_str().unwrap();
            assert!(
                !is_loop(text),
                "{name}: a repetition loop was shown: {text:?}"
            );
        }
        let counts = &file["segment_counts"];
        let accounted: u64 = [
            "transcribed",
            "no_speech",
            "skipped",
            "failed",
            "unintelligible",
        ]
        .iter()
        .map(|k| counts[k].as_u64().unwrap())
        .sum();
        assert_eq!(
            accounted,
            file["segments"].as_u64().unwrap(),
            "{name}: {counts}"
        );
        assert_eq!(
            counts["transcribed"].as_u64().unwrap(),
            segments.len() as u64,
            "{name}"
        );
        assert_eq!(counts["failed"].as_u64().unwrap(), 0, "{name}: {counts}");
    }
    // Silence has no speech to cut; around the spelled letters, the words are heard.
    assert_eq!(file("silence.wav")["segments"].as_u64(), Some(0), "{out}");
    let letters = transcript_text(file("letters.wav")).to_lowercase();
    assert!(letters.contains("my reference is"), "{letters}");
    assert_no_card(&out, "scan --json");
    assert_no_card(&logs, "scan logs");
}

/// A caller reads a card number aloud. The transcript has the number masked (whisper heard
/// digits and redaction caught them), and the number is found on no way out: `scan` text and JSON, the logs at
/// trace level, the gRPC call stream, `GetCall`, the alert stream, and the alert/call log file.
#[test]
fn a_spoken_card_number_never_leaves_unmasked() {
    let card = common::audio("card.wav");
    let (json_out, json_logs) = scan(&["scan", "--json"], &[&card]);
    let (text_out, text_logs) = scan(&["scan"], &[&card]);
    let masked = |t: &str| t.contains("[card]") || t.contains("[number]");
    assert!(masked(&json_out), "no masked number: {json_out}");
    assert!(masked(&text_out), "{text_out}");
    for (what, text) in [
        ("scan --json", &json_out),
        ("scan --json logs", &json_logs),
        ("scan", &text_out),
        ("scan logs", &text_logs),
    ] {
        assert_no_card(text, what);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut config = server_config(dir.path(), common::transcribing_config());
        // Every window alerts (the loudness model), so alerts carry transcript snippets.
        config.detector.model = common::root().join(".deps/test-models/loudness.onnx");
        config.verdict.enter_threshold = Some(0.01);
        let server = TestServer::start(config).await;
        let mut client = server.client(TOKEN_A).await;
        let mut alerts = client
            .stream_alerts(pb::AlertSubscription {
                after_sequence: Some(0),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let (samples, rate) = decode("card.wav");
        let updates = stream_call(
            &mut client,
            open_frame("card-call", pb::Codec::G711Mulaw, rate, 1),
            numbered(g711_frames(&samples, rate, Law::MuLaw)),
        )
        .await
        .unwrap();
        let streamed = format!("{updates:?}");
        assert!(masked(&streamed), "{streamed}");
        assert_no_card(&streamed, "StreamAudio updates");
        let info = client
            .get_call(pb::GetCallRequest {
                call_id: "card-call".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let info = format!("{info:?}");
        assert!(masked(&info), "GetCall has the transcript: {info}");
        assert_no_card(&info, "GetCall");
        let mut seen = Vec::new();
        while let Ok(Ok(Some(e))) =
            tokio::time::timeout(Duration::from_millis(500), alerts.message()).await
        {
            seen.push(format!("{e:?}"));
        }
        assert!(!seen.is_empty(), "alerts were raised");
        assert_no_card(&seen.join("\n"), "StreamAlerts");
        server.stop().await;
        let stored = std::fs::read(dir.path().join("alerts.db")).unwrap();
        let stored = String::from_utf8_lossy(&stored);
        assert!(masked(&stored), "the call's transcript is logged");
        assert_no_card(&stored, "alert log");
    });
}

/// Twelve live calls of speech arrive as fast as they can be pushed to one transcription
/// worker with 10 s of queue: segments are skipped and counted, every segment and every
/// detector window is accounted for, and no window is dropped for transcription's sake.
#[test]
fn over_budget_transcription_skips_and_counts_but_never_drops_a_window() {
    let mut config = common::transcribing_config();
    config.detector.model = common::root().join(".deps/test-models/loudness.onnx");
    config.detector.queue_windows = 100_000;
    config.transcribe.queue_s = 10;
    config.transcribe.max_segment_ms = 2_000;
    let engine = Engine::start(&config).unwrap();
    let (speech, rate) = common::read_wav(&common::audio("prompts.wav"));
    let speech = &speech[..rate as usize * 30];
    let format = SourceFormat {
        sample_rate: rate,
        channels: 1,
    };
    common::push_live_calls(&engine, 12, speech, format);
    let mut summaries = Vec::new();
    while summaries.len() < 12 {
        match engine.events().recv_timeout(Duration::from_secs(120)) {
            Ok(EngineEvent::Ended(s)) => summaries.push(s),
            Ok(_) => {}
            Err(e) => panic!("calls did not end: {e}"),
        }
    }
    let stats = engine.transcribe_stats().unwrap();
    let skipped: u64 = summaries.iter().map(|s| s.segment_counts.skipped).sum();
    assert!(skipped > 0, "12 calls at once must exceed one worker");
    assert_eq!(skipped, stats.skipped());
    for s in &summaries {
        assert_eq!(s.segment_counts.total(), s.segments, "{}", s.call_id);
        assert!(s.segments >= 10, "{}: {} segments", s.call_id, s.segments);
        assert_eq!(s.windows_dropped, 0, "{}", s.call_id);
        assert_eq!(s.windows_scored, s.windows, "{}", s.call_id);
    }
    engine.shutdown();
}

/// With one worker and a queue that cannot hold everything, a suspected call's segments are
/// taken first and make room by displacing other calls' segments, never the other way round.
#[test]
fn suspected_calls_are_transcribed_first() {
    let config = {
        let mut c = common::transcribing_config().transcribe;
        c.queue_s = 6;
        c
    };
    let model = WhisperModel::load(&config.model, Some("en")).unwrap();
    let (results_tx, results) = crossbeam_channel::unbounded::<SegmentResult>();
    let pool = TranscriberPool::start(&model, &config, results_tx).unwrap();
    let (speech, rate) = common::read_wav(&common::audio("prompts.wav"));
    assert_eq!(rate, 8_000);
    // 2 s of 16 kHz speech per segment (the sample values matter little to the scheduler).
    let two_s: Vec<f32> = speech[..16_000].iter().flat_map(|v| [*v, *v]).collect();
    let submitter = pool.submitter();
    submitter.set_priority(99, true);
    let mut skipped_now = Vec::new();
    for seq in 0..12u64 {
        for call in [1, 2] {
            let seg = SpeechSegment {
                call,
                seq,
                start_ms: seq * 2_000,
                end_ms: seq * 2_000 + 2_000,
                samples: two_s.clone(),
            };
            skipped_now.extend(submitter.submit(seg, WhenFull::DropNewest));
        }
        if seq % 4 == 0 {
            let seg = SpeechSegment {
                call: 99,
                seq: seq / 4,
                start_ms: seq * 2_000,
                end_ms: seq * 2_000 + 2_000,
                samples: two_s.clone(),
            };
            skipped_now.extend(submitter.submit(seg, WhenFull::DropNewest));
        }
    }
    assert!(!skipped_now.is_empty());
    assert!(skipped_now.iter().all(|r| r.call != 99), "{skipped_now:?}");
    pool.shutdown();
    let done: Vec<_> = results.try_iter().collect();
    assert_eq!(done.len() + skipped_now.len(), 12 * 2 + 3);
    let first_three: Vec<u64> = done.iter().take(4).map(|r| r.call).collect();
    assert_eq!(
        done.iter().filter(|r| r.call == 99).count(),
        3,
        "every suspected segment is transcribed"
    );
    assert!(
        first_three.iter().filter(|c| **c == 99).count() >= 2,
        "suspected segments go first: {first_three:?}"
    );
}
