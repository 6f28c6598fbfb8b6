//! Speech gating: silence, tones, noise and music-like chords are not scored; speech is.

mod common;

use callguard::audio::{ChannelPick, SourceFormat};
use callguard::config::SpeechConfig;
use callguard::pipeline::stream::{SegmentLimits, StreamOutput};
use callguard::pipeline::{CallStream, PIPELINE_RATE};
use callguard::pipeline::{Engine, score_files};

fn synth(rate: u32) -> Vec<f32> {
    let sine = |f: f32, i: usize| (2.0 * std::f32::consts::PI * f * i as f32 / rate as f32).sin();
    let n = |secs: f32| (secs * rate as f32) as usize;
    let mut x = vec![0.0; n(3.0)]; // silence
    x.extend((0..n(5.0)).map(|i| 0.3 * sine(440.0, i))); // dial tone
    x.extend((0..n(5.0)).map(|i| 0.2 * (sine(697.0, i) + sine(1209.0, i)))); // DTMF "1"
    let mut seed = 3u32;
    x.extend((0..n(5.0)).map(|_| {
        seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
        ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.02 // line noise
    }));
    // Hold-music-like chords changing every half second.
    let chords = [
        [261.6, 329.6, 392.0],
        [293.7, 370.0, 440.0],
        [246.9, 311.1, 370.0],
        [220.0, 277.2, 329.6],
    ];
    x.extend((0..n(8.0)).map(|i| {
        let c = chords[(i / n(0.5)) % chords.len()];
        0.1 * c.iter().map(|&f| sine(f, i)).sum::<f32>()
    }));
    x
}

#[test]
fn non_speech_is_not_scored_but_speech_is() {
    let dir = tempfile::tempdir().unwrap();
    let tones = dir.path().join("tones.wav");
    common::write_wav_i16(&tones, 8_000, 1, &synth(8_000));
    let engine = Engine::start(&common::shipped_config()).unwrap();
    let outcomes = score_files(
        &engine,
        &[tones, common::audio("genuine_2.wav")],
        ChannelPick::Mix,
        2,
        &|_| {},
    );
    let non_speech = outcomes[0].result.as_ref().unwrap();
    assert!(non_speech.audio_ms >= 25_000);
    assert_eq!(non_speech.windows_scored, 0, "{:?}", non_speech.timeline);
    assert!(
        non_speech.speech_ms < 400,
        "{} ms kept as speech",
        non_speech.speech_ms
    );
    let speech = outcomes[1].result.as_ref().unwrap();
    assert!(
        speech.speech_ms as f64 > 0.8 * speech.audio_ms as f64,
        "{speech:?}"
    );
}

/// Digital silence (a caller's channel while the agent talks) skips the VAD, and the speech
/// around it is gated as it is with the VAD asked about every frame.
#[test]
fn silence_below_the_energy_floor_skips_the_vad_and_changes_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (speech, rate) = common::read_wav(&common::audio("genuine_2.wav"));
    assert_eq!(rate, 8_000);
    let mut x = vec![0.0; 8_000 * 4];
    x.extend_from_slice(&speech[..8_000 * 6]);
    x.extend(vec![0.0; 8_000 * 4]);
    x.extend_from_slice(&speech[8_000 * 6..]);
    let path = dir.path().join("pauses.wav");
    common::write_wav_i16(&path, 8_000, 1, &x);
    let run = |floor: f32| {
        let mut config = common::shipped_config();
        config.speech.energy_floor_dbfs = floor;
        config.speech.noise_margin_db = 0.0;
        let engine = Engine::start(&config).unwrap();
        let outcome = score_files(
            &engine,
            std::slice::from_ref(&path),
            ChannelPick::Mix,
            1,
            &|_| {},
        );
        outcome[0].result.as_ref().unwrap().clone()
    };
    let floored = run(-60.0);
    let every = run(-200.0);
    assert_eq!(every.quiet_ms, 0);
    // At least the 8 s of inserted silence, less the frames that straddle speech.
    assert!(floored.quiet_ms >= 7_500, "{} ms skipped", floored.quiet_ms);
    let diff = floored.speech_ms.abs_diff(every.speech_ms);
    assert!(
        diff <= 200,
        "speech {} ms with the floor, {} ms without",
        floored.speech_ms,
        every.speech_ms
    );
    assert!(floored.windows_scored.abs_diff(every.windows_scored) <= 1);
}

/// One run of the VAD over several calls' frames, at 16 and 8 kHz, gives each call what running
/// it alone gives.
#[test]
fn batched_vad_matches_one_call_at_a_time() {
    use callguard::detect::{SileroVad, VadState};
    let (speech, _) = common::read_wav(&common::audio("genuine_1.wav"));
    let model = common::shipped_config().speech.vad_model;
    let mut alone = SileroVad::new(&model).unwrap();
    let mut together = SileroVad::new(&model).unwrap();
    let calls = 6;
    // Odd calls are 8 kHz calls in the VAD's 8 kHz mode: one run holds both kinds.
    let state = |call: usize| {
        if call % 2 == 1 {
            VadState::narrowband()
        } else {
            VadState::default()
        }
    };
    // Call i hears the recording from a different point, louder or softer.
    let frame = |call: usize, k: usize| -> Vec<f32> {
        let len = state(call).frame_len();
        let start = call * 7_919 + k * len;
        (start..start + len)
            .map(|t| speech[t % speech.len()] * (0.3 + 0.3 * call as f32))
            .collect()
    };
    let mut one_states: Vec<VadState> = (0..calls).map(state).collect();
    let mut batch_states = one_states.clone();
    let mut speech_frames = 0;
    for k in 0..60 {
        let frames: Vec<Vec<f32>> = (0..calls).map(|c| frame(c, k)).collect();
        let expected: Vec<f32> = (0..calls)
            .map(|c| alone.probability(&mut one_states[c], &frames[c]).unwrap())
            .collect();
        let mut batch: Vec<&mut VadState> = batch_states
            .iter_mut()
            .zip(&frames)
            .map(|(s, f)| {
                s.stage(f);
                s
            })
            .collect();
        together.run(&mut batch).unwrap();
        let out: Vec<f32> = batch
            .iter_mut()
            .map(|s| s.take().unwrap().unwrap())
            .collect();
        for (c, (&e, &g)) in expected.iter().zip(&out).enumerate() {
            assert!(
                (e - g).abs() < 1e-4,
                "frame {k}, call {c}: {e} alone, {g} batched"
            );
        }
        speech_frames += expected.iter().filter(|&&p| p > 0.5).count();
    }
    assert!(
        speech_frames > 120,
        "the recording is speech: {speech_frames} of 360 frames"
    );
}

/// What the gate keeps of one recording's channel 0 (the caller's, in a stereo call) under
/// `speech`: the kept stretches (ms), and the audio spared the VAD (ms).
fn gated(path: &std::path::Path, speech: &SpeechConfig) -> (Vec<(u64, u64)>, u64, u64) {
    let (caller, rate) = channel0(path);
    let config = common::shipped_config();
    let mut stream = CallStream::new(
        0,
        SourceFormat {
            sample_rate: rate,
            channels: 1,
        },
        ChannelPick::Mix,
        speech,
        &config.windows,
        16_000,
        Some(SegmentLimits {
            min_samples: 1,
            max_samples: 3600 * PIPELINE_RATE as usize,
        }),
    )
    .unwrap();
    let mut vad = callguard::detect::SileroVad::new(&speech.vad_model).unwrap();
    let mut kept = Vec::new();
    let mut emit = |o: StreamOutput| {
        if let StreamOutput::Speech(s) = o {
            kept.push((s.start_ms, s.end_ms));
        }
    };
    for chunk in caller.chunks(rate as usize / 50) {
        stream.push(&mut vad, chunk, &mut emit).unwrap();
    }
    stream.finish(&mut vad, &mut emit).unwrap();
    let stats = stream.stats();
    (kept, stats.quiet_ms, stats.audio_ms)
}

fn channel0(path: &std::path::Path) -> (Vec<f32>, u32) {
    let reader = hound::WavReader::open(path).unwrap();
    let spec = reader.spec();
    let ch = spec.channels as usize;
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Int => reader
            .into_samples::<i32>()
            .map(|v| v.unwrap() as f32 / (1u32 << (spec.bits_per_sample - 1)) as f32)
            .collect(),
        hound::SampleFormat::Float => reader.into_samples::<f32>().map(Result::unwrap).collect(),
    };
    (
        samples.iter().step_by(ch).copied().collect(),
        spec.sample_rate,
    )
}

fn overlap_ms(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    let mut total = 0;
    for &(s, e) in a {
        for &(t, f) in b {
            total += e.min(f).saturating_sub(s.max(t));
        }
    }
    total
}

/// The shipped speech gate (the noise pre-gate, `speech.noise_margin_db`, and the VAD's 8 kHz
/// mode for 8 kHz calls, `speech.narrowband_vad`) keeps at least 98% of the speech the full VAD
/// keeps (16 kHz, asked about every frame over the energy floor), on the test calls and on a real
/// two-speaker phone call (pyannote's sample, fetched by scripts/setup.sh; 16 kHz, and taken down
/// to 8 kHz as a G.711 leg would carry it), and spares the VAD the line noise between words.
#[test]
fn the_shipped_gate_keeps_the_speech_the_full_vad_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<std::path::PathBuf> = [
        "genuine_1.wav",
        "genuine_2.wav",
        "genuine_3.wav",
        "other_person.wav",
        "stereo_call.wav",
        "prompts.wav",
        "switch.wav",
        "pyannote_call.wav",
    ]
    .iter()
    .map(|f| common::audio(f))
    .collect();
    // The phone call at 8 kHz, through the project's resampler.
    let (call, rate) = channel0(&common::audio("pyannote_call.wav"));
    assert_eq!(rate, 16_000, "run scripts/setup.sh");
    let mut down = callguard::audio::resample::Resampler::new(16_000, 8_000).unwrap();
    let mut call8 = Vec::new();
    down.process(&call, &mut call8).unwrap();
    down.flush(&mut call8).unwrap();
    let path = dir.path().join("pyannote_call_8k.wav");
    common::write_wav_i16(&path, 8_000, 1, &call8);
    files.push(path);
    // Line noise at -50 dBFS under a recording with pauses: what the pre-gate is for.
    let (speech, rate) = common::read_wav(&common::audio("genuine_2.wav"));
    let mut seed = 11u32;
    let mut noisy: Vec<f32> = vec![0.0; rate as usize * 3];
    noisy.extend_from_slice(&speech[..rate as usize * 5]);
    noisy.extend(vec![0.0; rate as usize * 4]);
    noisy.extend_from_slice(&speech[rate as usize * 5..]);
    for x in &mut noisy {
        seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
        *x += ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.011;
    }
    let path = dir.path().join("noisy_pauses.wav");
    common::write_wav_i16(&path, rate, 1, &noisy);
    files.push(path);

    let shipped = common::shipped_config().speech;
    let full = SpeechConfig {
        noise_margin_db: 0.0,
        narrowband_vad: false,
        ..shipped.clone()
    };
    let (mut all_kept, mut all_both, mut spared_noisy) = (0, 0, 0);
    for file in &files {
        assert!(file.is_file(), "{} (run scripts/setup.sh)", file.display());
        let (reference, quiet_full, audio_ms) = gated(file, &full);
        let (ours, quiet_ours, _) = gated(file, &shipped);
        let kept: u64 = reference.iter().map(|(s, e)| e - s).sum();
        let both = overlap_ms(&reference, &ours);
        let share = both as f64 / kept.max(1) as f64;
        let ours_ms: u64 = ours.iter().map(|(s, e)| e - s).sum();
        eprintln!(
            "{}: {audio_ms} ms; the full VAD keeps {kept} ms, the shipped gate {ours_ms} ms and \
             {:.1}% of the full VAD's; not sent to the VAD: {quiet_full} ms (energy floor), \
             {} ms more (noise pre-gate)",
            file.file_name().unwrap().to_string_lossy(),
            100.0 * share,
            quiet_ours - quiet_full
        );
        assert!(kept > 1_000, "{}: {kept} ms of speech", file.display());
        assert!(
            share >= 0.98,
            "{}: the shipped gate keeps {:.1}% of the speech",
            file.display(),
            100.0 * share
        );
        assert!(quiet_ours >= quiet_full);
        all_kept += kept;
        all_both += both;
        if file == files.last().unwrap() {
            spared_noisy = quiet_ours - quiet_full;
        }
    }
    assert!(all_both as f64 >= 0.98 * all_kept as f64);
    // The 7 s of pauses under noise: most of it spared once the estimate has caught up.
    assert!(spared_noisy >= 4_000, "{spared_noisy} ms spared");
}
