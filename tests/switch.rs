//! A call that changes mid-way is caught when it changes, not before, and raises one alert per
//! change. The detector here is the test-only loudness graph (tests/models/make_test_models.py:
//! p_spoof rises with the window's level), so "the clone" is the same genuine voice played
//! 24 dB louder; the audio is pushed as 20 ms PCM frames like a network ingest would.

mod common;

use std::sync::atomic::AtomicBool;

use callguard::audio::SourceFormat;
use callguard::audio::push::{self, Encoding};
use callguard::pipeline::{CallSummary, Engine, EngineEvent, drive};
use callguard::verdict::AlertKind;

fn call(engine: &Engine, id: &str, samples: &[f32], rate: u32) -> CallSummary {
    let format = SourceFormat {
        sample_rate: rate,
        channels: 1,
    };
    let (handle, mut source) = push::channel(format, Encoding::Pcm16Le, 64).unwrap();
    let call = common::open_mono_call(engine, id, format, false);
    let mut vad = engine.vad().unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| drive(call, &mut vad, &mut source, &stop).unwrap());
        let frame = rate as usize / 50;
        for chunk in samples.chunks(frame) {
            let bytes: Vec<u8> = chunk
                .iter()
                .flat_map(|v| ((v.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
                .collect();
            // The queue is bounded; back off instead of dropping in this test.
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

fn speech(name: &str, dbfs: f32) -> (Vec<f32>, u32) {
    let (x, rate) = common::read_wav(&common::audio(name));
    (common::at_level(&x, dbfs), rate)
}

#[test]
fn quiet_call_never_alerts() {
    let engine = Engine::start(&common::loudness_config()).unwrap();
    let (quiet, rate) = speech("genuine_3.wav", -30.0);
    let s = call(&engine, "quiet", &quiet, rate);
    assert!(s.alerts.is_empty(), "{:?}", s.alerts);
    assert_eq!(s.verdict.as_str(), "genuine");
    assert!(s.windows_scored >= 30, "{} windows", s.windows_scored);
    assert!(s.p_spoof_peak.unwrap() < 0.1);
}

#[test]
fn a_switch_mid_call_alerts_once_after_the_switch() {
    let engine = Engine::start(&common::loudness_config()).unwrap();
    let (quiet, rate) = speech("genuine_3.wav", -30.0);
    let (loud, _) = speech("genuine_1.wav", -6.0);
    let switch_ms = quiet.len() as u64 * 1000 / rate as u64;
    let audio: Vec<f32> = quiet.iter().chain(&loud).copied().collect();
    let s = call(&engine, "switch", &audio, rate);
    let kinds: Vec<_> = s.alerts.iter().map(|a| a.kind).collect();
    assert_eq!(kinds, [AlertKind::SuspectedClone], "{:?}", s.alerts);
    let at = s.first_alert_ms.unwrap();
    assert!(
        at > switch_ms,
        "alert at {at} ms, before the switch at {switch_ms} ms"
    );
    assert!(
        at <= switch_ms + 2_500,
        "alert at {at} ms, switch at {switch_ms} ms"
    );
    // The evidence is the windows that crossed, and they end after the switch.
    let a = &s.alerts[0];
    assert!(!a.evidence.is_empty() && a.evidence.last().unwrap().end_ms == at);
    assert!(a.p_spoof >= a.threshold);
    // Every window before the switch stayed below the threshold.
    assert!(
        s.timeline
            .iter()
            .filter(|w| w.end_ms <= switch_ms)
            .all(|w| w.fused < 0.5)
    );
}

#[test]
fn suspected_then_cleared_with_hysteresis() {
    let engine = Engine::start(&common::loudness_config()).unwrap();
    let (quiet, rate) = speech("genuine_2.wav", -30.0);
    let (loud, _) = speech("genuine_1.wav", -6.0);
    let audio: Vec<f32> = quiet
        .iter()
        .chain(&loud)
        .chain(&quiet)
        .chain(&quiet)
        .copied()
        .collect();
    let s = call(&engine, "back-and-forth", &audio, rate);
    let kinds: Vec<_> = s.alerts.iter().map(|a| a.kind).collect();
    assert_eq!(
        kinds,
        [AlertKind::SuspectedClone, AlertKind::Cleared],
        "{:?}",
        s.alerts
    );
    assert_eq!(s.verdict.as_str(), "genuine");
    let quiet_ms = quiet.len() as u64 * 1000 / rate as u64;
    let loud_end = quiet_ms + loud.len() as u64 * 1000 / rate as u64;
    assert!(s.alerts[1].audio_ms > loud_end, "cleared while still loud");
}

#[test]
fn many_calls_at_once_are_kept_apart() {
    let engine = Engine::start(&common::loudness_config()).unwrap();
    let (quiet, rate) = speech("genuine_2.wav", -30.0);
    let (loud, _) = speech("genuine_2.wav", -6.0);
    let summaries: Vec<CallSummary> = std::thread::scope(|s| {
        let handles: Vec<_> = (0usize..6)
            .map(|i| {
                let (engine, audio) = (&engine, if i.is_multiple_of(2) { &quiet } else { &loud });
                s.spawn(move || call_with_own_listener(engine, &format!("call-{i}"), audio, rate))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for s in &summaries {
        let i: usize = s.call_id.trim_start_matches("call-").parse().unwrap();
        assert_eq!(
            s.alerts.is_empty(),
            i.is_multiple_of(2),
            "{}: {:?}",
            s.call_id,
            s.alerts
        );
    }
}

/// Like `call`, for concurrent use: events of other calls are left for their own waiters.
fn call_with_own_listener(engine: &Engine, id: &str, samples: &[f32], rate: u32) -> CallSummary {
    use std::sync::Mutex;
    static ENDED: Mutex<Vec<CallSummary>> = Mutex::new(Vec::new());
    let format = SourceFormat {
        sample_rate: rate,
        channels: 1,
    };
    let mut source = {
        let (handle, source) = push::channel(format, Encoding::Pcm16Le, 100_000).unwrap();
        for chunk in samples.chunks(160) {
            handle.push_samples(chunk.to_vec()).unwrap();
        }
        source
    };
    let call = common::open_mono_call(engine, id, format, false);
    let mut vad = engine.vad().unwrap();
    drive(call, &mut vad, &mut source, &AtomicBool::new(false)).unwrap();
    loop {
        {
            let mut ended = ENDED.lock().unwrap();
            if let Some(pos) = ended.iter().position(|s| s.call_id == id) {
                return ended.remove(pos);
            }
        }
        if let Ok(EngineEvent::Ended(s)) = engine
            .events()
            .recv_timeout(std::time::Duration::from_millis(10))
        {
            ENDED.lock().unwrap().push(*s);
        }
    }
}
