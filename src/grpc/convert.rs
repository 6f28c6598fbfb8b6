//! Domain types to and from their `callguard.v1` messages.

use super::proto as pb;
use crate::alert::{CallMeta, LoggedAlert, Severity};
use crate::audio::push::Encoding;
use crate::guard::{CallRecord, CallSource, EndedSummary, FrameError, OpenError, OpenSpec};
use crate::transcribe::{Cue, TranscriptSegment};
use crate::verdict::{AlertKind, CallState, ChannelClass, WindowScore};
use tonic::{Code, Status};

pub fn meta_from(m: Option<pb::CallMetadata>) -> CallMeta {
    let m = m.unwrap_or_default();
    CallMeta {
        ani: m.ani,
        dnis: m.dnis,
        agent: m.agent,
        labels: m.labels.into_iter().collect(),
    }
}

pub fn meta(m: &CallMeta) -> pb::CallMetadata {
    pb::CallMetadata {
        ani: m.ani.clone(),
        dnis: m.dnis.clone(),
        agent: m.agent.clone(),
        labels: m
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// The opening frame as a spec, or why it cannot open a call.
#[allow(clippy::result_large_err)]
pub fn open_spec(open: pb::CallOpen) -> Result<OpenSpec, Status> {
    let encoding = match pb::Codec::try_from(open.codec) {
        Ok(pb::Codec::Pcm16le) => Encoding::Pcm16Le,
        Ok(pb::Codec::F32le) => Encoding::F32Le,
        Ok(pb::Codec::G711Mulaw) => Encoding::MuLaw,
        Ok(pb::Codec::G711Alaw) => Encoding::ALaw,
        _ => {
            return Err(Status::invalid_argument(format!(
                "codec {} is not one of PCM16LE, F32LE, G711_MULAW, G711_ALAW",
                open.codec
            )));
        }
    };
    let channel_class = match pb::ChannelClass::try_from(open.channel_class) {
        Ok(c) => channel_class_from(c),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "channel_class {} is not one of UNSPECIFIED, WIDEBAND, NARROWBAND_G711, NARROWBAND_LOSSY",
                open.channel_class
            )));
        }
    };
    let small = |v: u32, what: &str| {
        u16::try_from(v).map_err(|_| Status::invalid_argument(format!("{what} {v} is too large")))
    };
    Ok(OpenSpec {
        call_id: open.call_id,
        encoding,
        sample_rate: open.sample_rate,
        channels: small(open.channels, "channels")?,
        caller_channel: open
            .caller_channel
            .map(|c| small(c, "caller_channel"))
            .transpose()?,
        metadata: meta_from(open.metadata),
        window_updates: open.window_updates,
        channel_class,
        source: CallSource::Stream,
    })
}

fn channel_class_from(c: pb::ChannelClass) -> Option<ChannelClass> {
    match c {
        pb::ChannelClass::Unspecified => None,
        pb::ChannelClass::Wideband => Some(ChannelClass::Wideband),
        pb::ChannelClass::NarrowbandG711 => Some(ChannelClass::NarrowbandG711),
        pb::ChannelClass::NarrowbandLossy => Some(ChannelClass::NarrowbandLossy),
    }
}

pub fn channel_class(c: Option<ChannelClass>) -> i32 {
    (match c {
        None => pb::ChannelClass::Unspecified,
        Some(ChannelClass::Wideband) => pb::ChannelClass::Wideband,
        Some(ChannelClass::NarrowbandG711) => pb::ChannelClass::NarrowbandG711,
        Some(ChannelClass::NarrowbandLossy) => pb::ChannelClass::NarrowbandLossy,
    }) as i32
}

pub fn open_status(e: OpenError) -> Status {
    match e {
        OpenError::Invalid(m) => Status::invalid_argument(m),
        OpenError::Register(r @ crate::guard::RegisterError::AlreadyLive(_)) => {
            Status::already_exists(r.to_string())
        }
        OpenError::Register(r) => Status::resource_exhausted(r.to_string()),
        OpenError::Busy => Status::resource_exhausted(e.to_string()),
        OpenError::Stopped => Status::unavailable(e.to_string()),
        OpenError::Engine(e) => Status::internal(e.to_string()),
    }
}

pub fn frame_code(e: &FrameError) -> Code {
    match e {
        FrameError::Invalid(_) => Code::InvalidArgument,
        FrameError::TooFast { .. } | FrameError::Busy => Code::ResourceExhausted,
        FrameError::Stopped => Code::Unavailable,
    }
}

pub fn state(s: CallState) -> i32 {
    (match s {
        CallState::Listening => pb::CallState::Listening,
        CallState::Genuine => pb::CallState::Genuine,
        CallState::Suspected => pb::CallState::Suspected,
    }) as i32
}

pub fn window(w: &WindowScore) -> pb::WindowScore {
    pb::WindowScore {
        sequence: w.seq,
        start_ms: w.start_ms,
        end_ms: w.end_ms,
        p_spoof: w.p_spoof,
        fused: w.fused,
        allowed_voice: w.allowed_voice,
    }
}

pub fn severity(s: Severity) -> i32 {
    (match s {
        Severity::Info => pb::Severity::Info,
        Severity::Warning => pb::Severity::Warning,
        Severity::Critical => pb::Severity::Critical,
    }) as i32
}

pub fn severity_from(v: i32) -> Option<Severity> {
    match pb::Severity::try_from(v) {
        Ok(pb::Severity::Info) => Some(Severity::Info),
        Ok(pb::Severity::Warning) => Some(Severity::Warning),
        Ok(pb::Severity::Critical) => Some(Severity::Critical),
        _ => None,
    }
}

pub fn alert(a: &LoggedAlert) -> pb::Alert {
    pb::Alert {
        id: a.id.clone(),
        sequence: a.sequence,
        call_id: a.call_id.clone(),
        tenant: a.tenant.clone(),
        kind: (match a.kind {
            AlertKind::SuspectedClone => pb::AlertKind::SuspectedClone,
            AlertKind::Cleared => pb::AlertKind::Cleared,
            AlertKind::Escalated => pb::AlertKind::Escalated,
            AlertKind::VoiceChanged => pb::AlertKind::VoiceChanged,
            AlertKind::IdentityMismatch => pb::AlertKind::IdentityMismatch,
        }) as i32,
        severity: severity(a.severity),
        p_spoof: a.p_spoof,
        threshold: a.threshold,
        audio_ms: a.audio_ms,
        wall_time_ms: a.wall_time_ms,
        evidence: a.evidence.iter().map(window).collect(),
        model: a.model.clone(),
        transcript_snippet: a.transcript_snippet.to_string(),
        metadata: Some(meta(&a.metadata)),
        risk: a.risk,
        cues: a.cues.iter().map(cue).collect(),
        acknowledgement: a.acknowledged.as_ref().map(acknowledgement),
        voice_similarity: a.voice_similarity,
    }
}

pub fn acknowledgement(a: &crate::alert::Acknowledgement) -> pb::Acknowledgement {
    pb::Acknowledgement {
        alert_id: a.alert_id.clone(),
        by: a.by.clone(),
        note: a.note.to_string(),
        at_ms: a.at_ms,
    }
}

pub fn cue(c: &Cue) -> pb::Cue {
    pb::Cue {
        rule: c.rule.clone(),
        weight: c.weight,
        text: c.text.clone(),
        start_ms: c.start_ms,
        end_ms: c.end_ms,
    }
}

pub fn transcript(s: &TranscriptSegment) -> pb::TranscriptSegment {
    pb::TranscriptSegment {
        seq: s.seq,
        start_ms: s.start_ms,
        end_ms: s.end_ms,
        text: s.text.to_string(),
        cues: s.cues.iter().map(cue).collect(),
    }
}

pub fn summary(call_id: &str, s: &EndedSummary) -> pb::CallSummary {
    pb::CallSummary {
        call_id: call_id.to_owned(),
        verdict: state(s.verdict),
        p_spoof: s.p_spoof,
        p_spoof_peak: s.p_spoof_peak,
        first_alert_ms: s.first_alert_ms,
        first_verdict_ms: s.first_verdict_ms,
        audio_ms: s.audio_ms,
        speech_ms: s.speech_ms,
        windows: s.windows,
        windows_scored: s.windows_scored,
        windows_dropped: s.windows_dropped,
        windows_failed: s.windows_failed,
        frames_received: s.frames_received,
        frames_rejected: s.frames_rejected,
        frames_lost: s.frames_lost,
        model: s.model.clone(),
        alerts: s.alerts,
        segments: s.segments,
        segments_transcribed: s.segment_counts.transcribed,
        segments_no_speech: s.segment_counts.no_speech,
        segments_skipped: s.segment_counts.skipped,
        segments_failed: s.segment_counts.failed,
        segments_unintelligible: s.segment_counts.unintelligible,
        channel_class: channel_class(s.channel_class),
        enter_threshold: s.enter_threshold,
    }
}

pub fn call_info(r: &CallRecord) -> pb::CallInfo {
    pb::CallInfo {
        call_id: r.call_id.clone(),
        tenant: r.tenant.clone(),
        state: if r.ended_wall_time_ms.is_some() {
            pb::CallState::Ended as i32
        } else {
            state(r.state)
        },
        source: (match r.source {
            CallSource::Stream => pb::CallSource::Stream,
            CallSource::Device => pb::CallSource::Device,
            CallSource::Twilio => pb::CallSource::Twilio,
            CallSource::AudioSocket => pb::CallSource::Audiosocket,
            CallSource::AudioHook => pb::CallSource::Audiohook,
            CallSource::Siprec => pb::CallSource::Siprec,
        }) as i32,
        p_spoof: r.p_spoof,
        p_spoof_peak: r.p_spoof_peak,
        first_alert_ms: r.first_alert_ms,
        audio_ms: r.audio_ms,
        windows_scored: r.windows_scored,
        alerts: r.alerts,
        started_wall_time_ms: r.started_wall_time_ms,
        ended_wall_time_ms: r.ended_wall_time_ms,
        metadata: Some(meta(&r.metadata)),
        recent_windows: r.recent_windows.iter().map(window).collect(),
        summary: r.summary.as_ref().map(|s| summary(&r.call_id, s)),
        transcript: r.transcript.iter().map(transcript).collect(),
        channel_class: channel_class(r.channel_class),
        enter_threshold: r.enter_threshold,
        node: r
            .cluster
            .as_ref()
            .map(|c| c.node.clone())
            .unwrap_or_default(),
        end_reason: r
            .cluster
            .as_ref()
            .and_then(|c| c.end_reason.clone())
            .unwrap_or_default(),
        resumed_from_node: r
            .cluster
            .as_ref()
            .and_then(|c| c.resumed_from_node.clone())
            .unwrap_or_default(),
        resume_gap_ms: r.cluster.as_ref().map_or(0, |c| c.resume_gap_ms),
    }
}
