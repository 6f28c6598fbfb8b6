//! The `callguard.v1.CallGuard` service over a [`Guard`].

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::Tenant;
use super::convert;
use super::proto as pb;
use crate::alert::AlertFilter;
use crate::guard::{
    BindError, CallUpdate, DeviceSpec, FeedError, FeedItem, Guard, RegisterError, StreamCall,
};

/// Responses queued per RPC before the sender waits for the client.
const RESPONSE_QUEUE: usize = 64;

pub struct CallGuardService {
    guard: Arc<Guard>,
}

impl CallGuardService {
    pub fn new(guard: Arc<Guard>) -> Self {
        Self { guard }
    }
}

#[allow(clippy::result_large_err)]
fn tenant<T>(req: &Request<T>) -> Result<Arc<str>, Status> {
    req.extensions()
        .get::<Tenant>()
        .map(|t| t.0.clone())
        .ok_or_else(|| Status::unauthenticated("no tenant"))
}

fn update(u: CallUpdate) -> pb::CallUpdate {
    use pb::call_update::Update;
    let update = match u {
        CallUpdate::Verdict {
            state,
            p_spoof,
            audio_ms,
            windows_scored,
        } => Update::Verdict(pb::Verdict {
            state: convert::state(state),
            p_spoof,
            audio_ms,
            windows_scored,
        }),
        CallUpdate::Window(w) => Update::Window(convert::window(&w)),
        CallUpdate::Alert(a) => Update::Alert(convert::alert(&a)),
        CallUpdate::Transcript(s) => Update::Transcript(convert::transcript(&s)),
    };
    pb::CallUpdate {
        update: Some(update),
    }
}

type Out<T> = mpsc::Sender<Result<T, Status>>;

/// Reads the call's frames and relays its updates until the client closes, the call is ended,
/// or the connection drops; then finishes the call and sends its summary.
async fn run_call(
    mut inbound: Streaming<pb::AudioFrame>,
    mut call: StreamCall,
    out: Out<pb::CallUpdate>,
) {
    use pb::audio_frame::Frame;
    use pb::call_update::Update;
    let end = call.end_signal();
    loop {
        tokio::select! {
            biased;
            _ = end.wait() => break,
            Some(u) = call.update() => {
                let _ = out.send(Ok(update(u))).await;
            }
            frame = inbound.message() => match frame {
                Ok(Some(pb::AudioFrame { frame: Some(Frame::Audio(chunk)) })) => {
                    if let Err(e) = call.push(chunk.sequence, &chunk.data) {
                        let rejected = pb::FrameRejected {
                            sequence: chunk.sequence,
                            code: convert::frame_code(&e) as i32,
                            reason: e.to_string(),
                        };
                        let _ = out.send(Ok(pb::CallUpdate { update: Some(Update::Rejected(rejected)) })).await;
                    }
                }
                Ok(Some(other)) => {
                    let reason = match other.frame {
                        Some(Frame::Open(_)) => "the call is already open; audio frames only",
                        _ => "empty frame (neither open nor audio)",
                    };
                    let rejected = pb::FrameRejected {
                        sequence: 0,
                        code: tonic::Code::InvalidArgument as i32,
                        reason: reason.into(),
                    };
                    let _ = out.send(Ok(pb::CallUpdate { update: Some(Update::Rejected(rejected)) })).await;
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(call_id = call.call_id(), %status, "Audio stream broke; ending the call.");
                    break;
                }
            },
        }
    }
    let record = call.finish().await;
    while let Some(u) = call.update().await {
        let _ = out.send(Ok(update(u))).await;
    }
    if let Some(summary) = record.as_ref().and_then(|r| r.summary.as_ref()) {
        let ended = convert::summary(call.call_id(), summary);
        let _ = out
            .send(Ok(pb::CallUpdate {
                update: Some(Update::Ended(ended)),
            }))
            .await;
    }
}

/// The cluster's alerts as `StreamAlerts` events, until the client goes or the feed breaks.
fn cluster_alerts(
    mut feed: crate::cluster::ClusterFeed,
) -> ReceiverStream<Result<pb::AlertEvent, Status>> {
    let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
    tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                _ = tx.closed() => break,
                item = feed.next() => item,
            };
            let event = match item {
                Some(Ok(a)) => pb::alert_event::Event::Alert(convert::alert(&a)),
                Some(Err(e)) => {
                    let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                    break;
                }
                None => break,
            };
            if tx
                .send(Ok(pb::AlertEvent { event: Some(event) }))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    ReceiverStream::new(rx)
}

#[tonic::async_trait]
impl pb::call_guard_server::CallGuard for CallGuardService {
    type StreamAudioStream = ReceiverStream<Result<pb::CallUpdate, Status>>;
    type StreamAlertsStream = ReceiverStream<Result<pb::AlertEvent, Status>>;

    async fn stream_audio(
        &self,
        req: Request<Streaming<pb::AudioFrame>>,
    ) -> Result<Response<Self::StreamAudioStream>, Status> {
        let tenant = tenant(&req)?;
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before its opening frame"))?;
        let Some(pb::audio_frame::Frame::Open(open)) = first.frame else {
            return Err(Status::invalid_argument(
                "the first frame must open the call (CallOpen)",
            ));
        };
        let spec = convert::open_spec(open)?;
        let call = self
            .guard
            .open_stream(&tenant, spec)
            .map_err(convert::open_status)?;
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let opened = pb::CallOpened {
            call_id: call.call_id().to_owned(),
            model: self.guard.model().to_owned(),
            window_ms: self.guard.window_ms(),
            channel_class: convert::channel_class(Some(call.channel_class())),
            enter_threshold: call.enter_threshold(),
        };
        let _ = tx
            .send(Ok(pb::CallUpdate {
                update: Some(pb::call_update::Update::Opened(opened)),
            }))
            .await;
        tokio::spawn(run_call(inbound, call, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn stream_alerts(
        &self,
        req: Request<pb::AlertSubscription>,
    ) -> Result<Response<Self::StreamAlertsStream>, Status> {
        let tenant = tenant(&req)?;
        let sub = req.into_inner();
        let filter = AlertFilter {
            call_id: Some(sub.call_id).filter(|c| !c.is_empty()),
            min_severity: convert::severity_from(sub.min_severity),
        };
        if let Some(cluster) = self.guard.cluster() {
            let feed = cluster
                .alerts(&tenant, filter, sub.after_sequence)
                .await
                .map_err(|e| match e {
                    crate::cluster::ClusterError::Down => Status::unavailable(e.to_string()),
                    _ => Status::internal(e.to_string()),
                })?;
            return Ok(Response::new(cluster_alerts(feed)));
        }
        let guard = self.guard.clone();
        let mut feed =
            tokio::task::spawn_blocking(move || guard.alerts(&tenant, filter, sub.after_sequence))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| match e {
                    FeedError::Hub(h @ crate::alert::HubError::Closed) => {
                        Status::unavailable(h.to_string())
                    }
                    FeedError::Hub(h) => Status::resource_exhausted(h.to_string()),
                    FeedError::Store(s) => Status::internal(s.to_string()),
                })?;
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        tokio::spawn(async move {
            use pb::alert_event::Event;
            loop {
                let item = tokio::select! {
                    _ = tx.closed() => break,
                    item = feed.next() => item,
                };
                let event = match item {
                    Some(Ok(FeedItem::Alert(a))) => Event::Alert(convert::alert(&a)),
                    Some(Ok(FeedItem::Lag {
                        resume_after,
                        overflowed,
                    })) => Event::Lag(pb::Lag {
                        resume_after_sequence: resume_after,
                        overflowed,
                    }),
                    Some(Err(e)) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        break;
                    }
                    None => break,
                };
                if tx
                    .send(Ok(pb::AlertEvent { event: Some(event) }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_calls(
        &self,
        req: Request<pb::ListCallsRequest>,
    ) -> Result<Response<pb::ListCallsResponse>, Status> {
        let tenant = tenant(&req)?;
        let mut calls = self.guard.list_calls(&tenant);
        if let Some(cluster) = self.guard.cluster() {
            for c in &mut calls {
                c.cluster = Some(cluster.place_of(&c.tenant, &c.call_id));
            }
            calls.extend(cluster.remote_calls(&tenant));
        }
        Ok(Response::new(pb::ListCallsResponse {
            calls: calls.iter().map(convert::call_info).collect(),
        }))
    }

    async fn get_call(
        &self,
        req: Request<pb::GetCallRequest>,
    ) -> Result<Response<pb::CallInfo>, Status> {
        let tenant = tenant(&req)?;
        let call_id = req.into_inner().call_id;
        // In a cluster: where the call is (or was), as the shared bucket says.
        let mut place = None;
        if let Some(cluster) = self.guard.cluster() {
            if let Some(mut live) = self
                .guard
                .registry()
                .with_id(&tenant, &call_id, |e| e.record())
            {
                live.cluster = Some(cluster.place_of(&tenant, &call_id));
                return Ok(Response::new(convert::call_info(&live)));
            }
            // Live on another node (asked of it), or ended there; this node's own ended calls
            // are richer in its store (summary, transcript).
            match cluster.get_call(&tenant, &call_id).await {
                Ok(Some(r)) if r.cluster.as_ref().is_some_and(|c| c.node != cluster.node()) => {
                    return Ok(Response::new(convert::call_info(&r)));
                }
                Ok(r) => {
                    place = Some(r.and_then(|r| r.cluster).unwrap_or_else(|| {
                        crate::guard::ClusterPlace {
                            node: cluster.node().to_owned(),
                            ..Default::default()
                        }
                    }));
                }
                Err(e) => {
                    tracing::debug!(call_id, error = %e, "The cluster cannot say; the local store answers.")
                }
            }
        }
        let guard = self.guard.clone();
        let id = call_id.clone();
        let found = tokio::task::spawn_blocking(move || guard.get_call(&tenant, &id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        match found {
            Some(mut record) => {
                if record.cluster.is_none() {
                    record.cluster = place;
                }
                Ok(Response::new(convert::call_info(&record)))
            }
            None => Err(Status::not_found(format!("no call {call_id:?}"))),
        }
    }

    async fn acknowledge_alert(
        &self,
        req: Request<pb::AcknowledgeAlertRequest>,
    ) -> Result<Response<pb::Acknowledgement>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        if r.by.trim().is_empty() {
            return Err(Status::invalid_argument("say who acknowledges (by)"));
        }
        let guard = self.guard.clone();
        let id = r.alert_id.clone();
        let done = tokio::task::spawn_blocking(move || {
            guard
                .log()
                .acknowledge(&tenant, &id, r.by.trim(), &r.note, crate::alert::now_ms())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::unavailable(e.to_string()))?;
        match done {
            Some(ack) => Ok(Response::new(convert::acknowledgement(&ack))),
            None => Err(Status::not_found(format!("no alert {:?}", r.alert_id))),
        }
    }

    async fn enroll_voice(
        &self,
        req: Request<pb::EnrollVoiceRequest>,
    ) -> Result<Response<pb::EnrollVoiceResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        if !crate::config::valid_name(&r.name) {
            return Err(Status::invalid_argument(
                "name: 1-64 letters, digits or -_.",
            ));
        }
        let (kind, min_speech_s) = match pb::VoiceKind::try_from(r.kind) {
            Ok(pb::VoiceKind::Protected) => ("protected", 30.0),
            Ok(pb::VoiceKind::Allowed) => ("allowed", 5.0),
            _ => return Err(Status::invalid_argument("kind: PROTECTED or ALLOWED")),
        };
        if r.recordings.is_empty() {
            return Err(Status::invalid_argument("no recordings"));
        }
        let guard = self.guard.clone();
        let made = tokio::task::spawn_blocking(move || {
            // The engine reads files: each recording goes to a private temporary folder,
            // removed with it, named by its format.
            let dir = tempfile::tempdir().map_err(|e| Status::internal(e.to_string()))?;
            let mut files = Vec::new();
            for (i, bytes) in r.recordings.iter().enumerate() {
                let ext = match bytes.get(..4) {
                    Some(b"RIFF") => "wav",
                    Some(b"fLaC") => "flac",
                    _ => {
                        return Err(Status::invalid_argument(format!(
                            "recording {i} is neither WAV nor FLAC"
                        )));
                    }
                };
                let path = dir.path().join(format!("{i}.{ext}"));
                std::fs::write(&path, bytes).map_err(|e| Status::internal(e.to_string()))?;
                files.push(path);
            }
            guard
                .enroll_voice(&tenant, kind, &r.name, &files, min_speech_s)
                .map_err(|e| match e {
                    crate::guard::ClaimError::NoEncoder => {
                        Status::failed_precondition(e.to_string())
                    }
                    crate::guard::ClaimError::Audio(_) => Status::invalid_argument(e.to_string()),
                    _ => Status::unavailable(e.to_string()),
                })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(pb::EnrollVoiceResponse {
            name: made.voice.name,
            speech_seconds: made.speech_s as f32,
            windows: made.windows,
        }))
    }

    async fn claim_identity(
        &self,
        req: Request<pb::ClaimIdentityRequest>,
    ) -> Result<Response<pb::ClaimIdentityResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let guard = self.guard.clone();
        tokio::task::spawn_blocking(move || guard.claim_identity(&tenant, &r.call_id, &r.identity))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                crate::guard::ClaimError::NoEncoder => Status::failed_precondition(e.to_string()),
                crate::guard::ClaimError::NoCall(_) | crate::guard::ClaimError::NoVoiceprint(_) => {
                    Status::not_found(e.to_string())
                }
                _ => Status::unavailable(e.to_string()),
            })?;
        Ok(Response::new(pb::ClaimIdentityResponse {}))
    }

    async fn end_call(
        &self,
        req: Request<pb::EndCallRequest>,
    ) -> Result<Response<pb::EndCallResponse>, Status> {
        let tenant = tenant(&req)?;
        let call_id = req.into_inner().call_id;
        if self.guard.end_call(&tenant, &call_id) {
            Ok(Response::new(pb::EndCallResponse {}))
        } else {
            Err(Status::not_found(format!("no live call {call_id:?}")))
        }
    }

    async fn bind_device(
        &self,
        req: Request<pb::BindDeviceRequest>,
    ) -> Result<Response<pb::BindDeviceResponse>, Status> {
        let tenant = tenant(&req)?;
        let r = req.into_inner();
        let caller_channel = r
            .caller_channel
            .map(|c| {
                u16::try_from(c).map_err(|_| {
                    Status::invalid_argument(format!("caller_channel {c} is too large"))
                })
            })
            .transpose()?;
        let spec = DeviceSpec {
            tenant: tenant.to_string(),
            device: r.device,
            call_id: r.call_id.clone(),
            caller_channel,
            metadata: convert::meta_from(r.metadata),
        };
        let guard = self.guard.clone();
        tokio::task::spawn_blocking(move || guard.bind_device(spec, false))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                BindError::Invalid(m) => Status::invalid_argument(m),
                BindError::Device { .. } => Status::not_found(e.to_string()),
                BindError::Register(r @ RegisterError::AlreadyLive(_)) => {
                    Status::already_exists(r.to_string())
                }
                BindError::Register(r) => Status::resource_exhausted(r.to_string()),
                BindError::Engine(_) | BindError::Thread(_) => Status::internal(e.to_string()),
            })?;
        Ok(Response::new(pb::BindDeviceResponse { call_id: r.call_id }))
    }
}
