//! What the load and soak harnesses share: the calls they play (genuine and switching to a
//! synthetic voice, 8 kHz G.711 mu-law in 20 ms frames), the daemon they start, and one call
//! streamed in real time through gRPC.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use callguard::audio::g711::{self, Law};
use callguard::audio::{AudioSource, Read};
use callguard::grpc::proto as pb;
use callguard::grpc::proto::call_guard_client::CallGuardClient;
use tonic::transport::Channel;

pub const TOKEN: &str = "load-harness-token";
pub const FRAME_MS: u64 = 20;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A recording from `.deps/audio` as 8 kHz mono.
pub fn decode(name: &str) -> Vec<f32> {
    let path = root().join(".deps/audio").join(name);
    let mut src = callguard::audio::file::FileSource::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", path.display()));
    let f = src.format();
    assert_eq!(f.sample_rate, 8_000, "{name}");
    let mut all = Vec::new();
    let mut buf = Vec::new();
    while let Read::Samples = src.read(&mut buf).unwrap() {
        all.extend_from_slice(&buf);
    }
    all.chunks(f.channels as usize)
        .map(|c| c.iter().sum::<f32>() / c.len() as f32)
        .collect()
}

pub struct Plan {
    pub id: String,
    /// 20 ms G.711 frames.
    pub frames: Arc<Vec<Vec<u8>>>,
    /// Where the synthetic voice starts, in ms of call audio; None for a genuine call.
    pub onset_ms: Option<u64>,
}

/// With `turns`, the caller talks in turns of 3-8 s and is silent for 2-6 s between them (the
/// agent's turns; line noise at about -75 dBFS), as on the caller channel of a real call.
pub fn talk_in_turns(x: &mut [f32], seed: usize) {
    let mut rng = (seed as u64)
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    let mut next = |lo: u64, hi: u64| {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        lo + (rng >> 33) % (hi - lo + 1)
    };
    let mut t = 0usize;
    while t < x.len() {
        t += next(3_000, 8_000) as usize * 8;
        let quiet = next(2_000, 6_000) as usize * 8;
        for (k, v) in x.iter_mut().skip(t).take(quiet).enumerate() {
            *v = if k % 2 == 0 { 2e-4 } else { -2e-4 };
        }
        t += quiet;
    }
}

pub fn plans(n: usize, seconds: u64, turns: bool) -> Vec<Plan> {
    let genuine: Vec<f32> = ["genuine_1.wav", "genuine_2.wav", "genuine_3.wav"]
        .iter()
        .flat_map(|f| decode(f))
        .collect();
    let clone = decode("synthetic_espeak_ulaw.wav");
    let total = (seconds * 8_000) as usize;
    let looped = |src: &[f32], offset: usize, len: usize| -> Vec<f32> {
        (0..len).map(|i| src[(offset + i) % src.len()]).collect()
    };
    let encode = |x: &[f32]| -> Arc<Vec<Vec<u8>>> {
        Arc::new(
            x.chunks(160)
                .map(|c| {
                    let mut out = Vec::with_capacity(160);
                    g711::encode_into(Law::MuLaw, c, &mut out);
                    out
                })
                .collect(),
        )
    };
    (0..n)
        .map(|i| {
            // Different starting points in the genuine material, and onsets from 40% to 60%.
            let offset = (i * 37_123) % genuine.len();
            if i % 2 == 0 {
                let mut x = looped(&genuine, offset, total);
                if turns {
                    talk_in_turns(&mut x, i);
                }
                Plan {
                    id: format!("genuine-{i}"),
                    frames: encode(&x),
                    onset_ms: None,
                }
            } else {
                let mut onset = total * (40 + (i * 7) % 21) / 100 / 160 * 160;
                let mut x = looped(&genuine, offset, onset);
                x.extend(looped(&clone, 0, total - onset));
                if turns {
                    talk_in_turns(&mut x, i);
                    // The clone starts talking at the first turn after the switch.
                    while onset < x.len() && x[onset].abs() <= 2e-4 {
                        onset += 1;
                    }
                }
                Plan {
                    id: format!("switch-{i}"),
                    frames: encode(&x),
                    onset_ms: Some(onset as u64 / 8),
                }
            }
        })
        .collect()
}

pub struct Daemon {
    pub child: Child,
    pub addr: String,
    /// Holds the config and the alert log (`alerts.db`).
    pub dir: tempfile::TempDir,
}

impl Daemon {
    /// `callguard run` on a free port with the shipped models: transcription on or off,
    /// `detector` the lines of its `[detector]` table (`cascade = true`, thread and batch
    /// settings), and `extra` whole tables appended.
    pub fn start(transcribe: bool, detector: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("load.toml");
        std::fs::write(
            &config,
            format!(
                "[speech]\nvad_model = \"{}\"\n[detector]\nmodel = \"{}\"\n{}\n[server]\nlisten = \"127.0.0.1:0\"\nmax_calls_per_tenant = 100000\n[[server.tenants]]\nname = \"load\"\ntoken_sha256 = \"{}\"\n[store]\npath = \"alerts.db\"\n[transcribe]\nenabled = {}\n{}",
                root().join(".deps/silero_vad.onnx").display(),
                root().join("models/detector.onnx").display(),
                detector.trim_end(),
                callguard::grpc::token_sha256(TOKEN),
                transcribe,
                extra,
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_callguard"))
            .args(["--config", config.to_str().unwrap(), "run"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("daemon exited").unwrap();
            if let Some(rest) = line.split("gRPC listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr, dir }
    }

    /// (user+system CPU seconds, resident memory in bytes) of the daemon.
    pub fn usage(&self) -> (f64, u64) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // Fields after the command name: utime is the 12th, stime the 13th (0-based 11, 12).
        let cpu = (ticks(11) + ticks(12)) / 100.0;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
        (cpu, rss)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
pub struct CallResult {
    pub onset_ms: Option<u64>,
    /// Audio time of each suspected-clone alert, and when it arrived after that audio was sent.
    pub suspected: Vec<(u64, Duration)>,
    pub summary: Option<pb::CallSummary>,
    pub rejected: u64,
    pub summary_delay: Option<Duration>,
}

pub async fn run_call(
    mut client: CallGuardClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>,
    plan: Plan,
    start: tokio::time::Instant,
) -> CallResult {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let open = pb::AudioFrame {
        frame: Some(pb::audio_frame::Frame::Open(pb::CallOpen {
            call_id: plan.id.clone(),
            codec: pb::Codec::G711Mulaw as i32,
            sample_rate: 8_000,
            channels: 1,
            ..Default::default()
        })),
    };
    tx.send(open).await.unwrap();
    let frames = plan.frames.clone();
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(start, Duration::from_millis(FRAME_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for (seq, data) in frames.iter().enumerate() {
            tick.tick().await;
            let frame = pb::AudioFrame {
                frame: Some(pb::audio_frame::Frame::Audio(pb::AudioChunk {
                    sequence: seq as u64,
                    data: data.clone(),
                })),
            };
            if tx.send(frame).await.is_err() {
                break;
            }
        }
        tokio::time::Instant::now()
    });
    let mut result = CallResult {
        onset_ms: plan.onset_ms,
        ..Default::default()
    };
    let mut updates = match client
        .stream_audio(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => panic!("{}: {e}", plan.id),
    };
    while let Ok(Some(u)) = updates.message().await {
        use pb::call_update::Update;
        match u.update {
            Some(Update::Alert(a)) if a.kind == pb::AlertKind::SuspectedClone as i32 => {
                let sent_at = start + Duration::from_millis(a.audio_ms);
                result.suspected.push((
                    a.audio_ms,
                    tokio::time::Instant::now().saturating_duration_since(sent_at),
                ));
            }
            Some(Update::Rejected(_)) => result.rejected += 1,
            Some(Update::Ended(s)) => result.summary = Some(s),
            _ => {}
        }
    }
    if let Ok(last_sent) = sender.await {
        result.summary_delay = Some(tokio::time::Instant::now() - last_sent);
    }
    result
}

#[derive(Clone)]
pub struct Bearer(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some(sorted[i])
}
