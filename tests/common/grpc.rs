//! An in-process callguard gRPC server on a free loopback port, and clients for it.

use std::net::SocketAddr;
use std::sync::Arc;

use callguard::audio::g711::{self, Law};
use callguard::audio::{AudioSource, Read};
use callguard::config::{Config, TenantConfig};
use callguard::grpc::proto as pb;
use callguard::grpc::proto::call_guard_client::CallGuardClient;
use callguard::guard::Guard;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

pub const TOKEN_A: &str = "token-for-bank-a";
pub const TOKEN_B: &str = "token-for-bank-b";

/// Two tenants, a private alert log, audio accepted as fast as the test sends it, and windows
/// never dropped (a loaded test machine must not change the verdicts).
pub fn server_config(dir: &std::path::Path, base: Config) -> Config {
    let mut c = base;
    c.store.path = dir.join("alerts.db");
    c.server.listen = Some("127.0.0.1:0".parse().unwrap());
    c.server.tenants = vec![
        TenantConfig {
            name: "bank-a".into(),
            token_sha256: callguard::grpc::token_sha256(TOKEN_A),
        },
        TenantConfig {
            name: "bank-b".into(),
            token_sha256: callguard::grpc::token_sha256(TOKEN_B),
        },
    ];
    c.server.max_speed = 1_000.0;
    c.server.burst_ms = 3_600_000;
    c.detector.when_full = callguard::config::WhenFull::Block;
    c
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub guard: Arc<Guard>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), callguard::grpc::ServeError>>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        // CALLGUARD_LOG=debug shows the server's logs when a test is investigated.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("CALLGUARD_LOG")
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let guard = tokio::task::spawn_blocking(move || Guard::start(&config, None).unwrap())
            .await
            .unwrap();
        let guard = Arc::new(guard);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        guard.readiness().set_listeners_bound(true);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(callguard::grpc::serve(guard.clone(), listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            guard,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self, token: &str) -> Client {
        client(&format!("http://{}", self.addr), token).await
    }

    /// Stops serving, then ends the calls and logs what remains.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        let guard = self.guard.clone();
        tokio::task::spawn_blocking(move || guard.shutdown())
            .await
            .unwrap();
    }
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Client = CallGuardClient<InterceptedService<Channel, Bearer>>;

/// A client for `url`; an empty token sends no authorization.
pub async fn client(url: &str, token: &str) -> Client {
    let channel = Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    with_token(channel, token)
}

pub fn with_token(channel: Channel, token: &str) -> Client {
    let bearer = (!token.is_empty()).then(|| format!("Bearer {token}").parse().unwrap());
    CallGuardClient::with_interceptor(channel, Bearer(bearer))
}

/// Any audio file the project reads, as mono f32 and its rate.
pub fn decode(name: &str) -> (Vec<f32>, u32) {
    let mut src = callguard::audio::file::FileSource::open(&super::audio(name)).unwrap();
    let f = src.format();
    let mut all = Vec::new();
    let mut buf = Vec::new();
    while let Read::Samples = src.read(&mut buf).unwrap() {
        all.extend_from_slice(&buf);
    }
    let ch = f.channels as usize;
    let mono = all
        .chunks(ch)
        .map(|x| x.iter().sum::<f32>() / ch as f32)
        .collect();
    (mono, f.sample_rate)
}

/// 20 ms G.711 frames of mono audio.
pub fn g711_frames(samples: &[f32], rate: u32, law: Law) -> Vec<Vec<u8>> {
    samples
        .chunks(rate as usize / 50)
        .map(|c| {
            let mut out = Vec::new();
            g711::encode_into(law, c, &mut out);
            out
        })
        .collect()
}

pub fn open_frame(call_id: &str, codec: pb::Codec, rate: u32, channels: u32) -> pb::AudioFrame {
    pb::AudioFrame {
        frame: Some(pb::audio_frame::Frame::Open(pb::CallOpen {
            call_id: call_id.into(),
            codec: codec as i32,
            sample_rate: rate,
            channels,
            caller_channel: None,
            metadata: Some(pb::CallMetadata {
                ani: "+15550100".into(),
                dnis: "+15550199".into(),
                agent: "agent-7".into(),
                labels: Default::default(),
            }),
            window_updates: false,
            channel_class: pb::ChannelClass::Unspecified as i32,
        })),
    }
}

pub fn audio_frame(sequence: u64, data: Vec<u8>) -> pb::AudioFrame {
    pb::AudioFrame {
        frame: Some(pb::audio_frame::Frame::Audio(pb::AudioChunk {
            sequence,
            data,
        })),
    }
}

/// Streams a whole call (open, then `frames` numbered from 0) and collects every update until
/// the server ends the RPC.
pub async fn stream_call(
    client: &mut Client,
    open: pb::AudioFrame,
    frames: Vec<pb::AudioFrame>,
) -> Result<Vec<pb::CallUpdate>, Status> {
    let outbound = tokio_stream::iter(std::iter::once(open).chain(frames));
    let mut inbound = client.stream_audio(outbound).await?.into_inner();
    let mut updates = Vec::new();
    while let Some(u) = inbound.message().await? {
        updates.push(u);
    }
    Ok(updates)
}

pub fn numbered(frames: Vec<Vec<u8>>) -> Vec<pb::AudioFrame> {
    frames
        .into_iter()
        .enumerate()
        .map(|(i, d)| audio_frame(i as u64, d))
        .collect()
}

pub fn summary_of(updates: &[pb::CallUpdate]) -> pb::CallSummary {
    match updates.last().and_then(|u| u.update.clone()) {
        Some(pb::call_update::Update::Ended(s)) => s,
        other => panic!("last update is not the summary: {other:?}"),
    }
}

pub fn alerts_of(updates: &[pb::CallUpdate]) -> Vec<pb::Alert> {
    updates
        .iter()
        .filter_map(|u| match &u.update {
            Some(pb::call_update::Update::Alert(a)) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

pub fn rejections_of(updates: &[pb::CallUpdate]) -> Vec<pb::FrameRejected> {
    updates
        .iter()
        .filter_map(|u| match &u.update {
            Some(pb::call_update::Update::Rejected(r)) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// The call once it has ended (the server may still be finishing it).
pub async fn ended_call(client: &mut Client, call_id: &str) -> pb::CallInfo {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Ok(info) = client
            .get_call(pb::GetCallRequest {
                call_id: call_id.into(),
            })
            .await
            && info.get_ref().state == pb::CallState::Ended as i32
        {
            return info.into_inner();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{call_id} never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
