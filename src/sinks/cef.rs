//! An alert as a syslog message (RFC 5424) whose text is an ArcSight Common Event Format record,
//! the form most SIEMs parse without a custom parser.
//!
//! `<PRI>1 TIMESTAMP HOST callguard - alert - CEF:0|callguard|callguard|VERSION|KIND|NAME|SEV|EXT`
//!
//! Written by hand because it is a format, not a protocol: a few escaping rules (CEF header
//! fields escape `\` and `|`; extension values escape `\`, `=` and line breaks) and the RFC 5424
//! header. The alert's text comes from the redacted transcript: card numbers were masked before
//! the alert was ever logged.

use std::fmt::Write as _;

use crate::alert::{Acknowledgement, LoggedAlert, Severity};
use crate::verdict::AlertKind;

/// RFC 5424 severity of an alert: critical 2, warning 4, info 6.
fn syslog_severity(s: Severity) -> u8 {
    match s {
        Severity::Critical => 2,
        Severity::Warning => 4,
        Severity::Info => 6,
    }
}

/// CEF severity, 0-10.
fn cef_severity(s: Severity) -> u8 {
    match s {
        Severity::Critical => 9,
        Severity::Warning => 6,
        Severity::Info => 3,
    }
}

fn name(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::SuspectedClone => "Suspected cloned voice on a call",
        AlertKind::Escalated => "Suspected cloned voice asking for a transfer or codes",
        AlertKind::Cleared => "Call no longer suspected",
        AlertKind::VoiceChanged => "Caller's voice changed mid-call",
        AlertKind::IdentityMismatch => "Caller is not the protected person they claim to be",
    }
}

fn header_field(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
}

fn ext(out: &mut String, key: &str, v: &str) {
    if v.is_empty() {
        return;
    }
    out.push(' ');
    out.push_str(key);
    out.push('=');
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// RFC 3339 time of `ms` since the epoch, UTC, to the millisecond.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

/// The CEF record of an alert.
pub fn record(a: &LoggedAlert) -> String {
    let mut out = String::from("CEF:0|callguard|callguard|");
    header_field(&mut out, env!("CARGO_PKG_VERSION"));
    out.push('|');
    header_field(&mut out, a.kind.as_str());
    out.push('|');
    header_field(&mut out, name(a.kind));
    let _ = write!(out, "|{}|", cef_severity(a.severity));
    out.push_str("rt=");
    out.push_str(&a.wall_time_ms.to_string());
    ext(&mut out, "externalId", &a.id);
    ext(&mut out, "cs1Label", "tenant");
    ext(&mut out, "cs1", &a.tenant);
    ext(&mut out, "cs2Label", "callId");
    ext(&mut out, "cs2", &a.call_id);
    ext(&mut out, "cs3Label", "model");
    ext(&mut out, "cs3", &a.model);
    ext(&mut out, "cs4Label", "agent");
    ext(&mut out, "cs4", &a.metadata.agent);
    ext(&mut out, "cfp1Label", "pSpoof");
    ext(&mut out, "cfp1", &format!("{:.4}", a.p_spoof));
    ext(&mut out, "cfp2Label", "risk");
    ext(&mut out, "cfp2", &format!("{:.4}", a.risk));
    ext(&mut out, "cn1Label", "sequence");
    ext(&mut out, "cn1", &a.sequence.to_string());
    ext(&mut out, "cn2Label", "callAudioMs");
    ext(&mut out, "cn2", &a.audio_ms.to_string());
    ext(&mut out, "suser", &a.metadata.ani);
    ext(&mut out, "duser", &a.metadata.dnis);
    ext(&mut out, "msg", a.transcript_snippet.as_str());
    out
}

/// The RFC 5424 message of a person's acknowledgement of an alert (CEF severity 1, syslog
/// notice).
pub fn ack_message(tenant: &str, ack: &Acknowledgement, facility: u8, hostname: &str) -> String {
    let mut cef = String::from("CEF:0|callguard|callguard|");
    header_field(&mut cef, env!("CARGO_PKG_VERSION"));
    cef.push_str("|acknowledged|Alert acknowledged|1|rt=");
    cef.push_str(&ack.at_ms.to_string());
    ext(&mut cef, "externalId", &ack.alert_id);
    ext(&mut cef, "cs1Label", "tenant");
    ext(&mut cef, "cs1", tenant);
    ext(&mut cef, "cs5Label", "acknowledgedBy");
    ext(&mut cef, "cs5", &ack.by);
    ext(&mut cef, "msg", ack.note.as_str());
    format!(
        "<{}>1 {} {} callguard - acknowledgement - {cef}",
        u16::from(facility) * 8 + 5,
        rfc3339(ack.at_ms),
        host_field(hostname)
    )
}

fn host_field(hostname: &str) -> String {
    // HOSTNAME is printable US-ASCII without spaces (RFC 5424 6.2.4), at most 255 characters.
    let host: String = hostname
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if host.is_empty() { "-".into() } else { host }
}

/// The RFC 5424 message carrying the CEF record.
pub fn syslog_message(a: &LoggedAlert, facility: u8, hostname: &str) -> String {
    let pri = u16::from(facility) * 8 + u16::from(syslog_severity(a.severity));
    format!(
        "<{pri}>1 {} {} callguard - alert - {}",
        rfc3339(a.wall_time_ms),
        host_field(hostname),
        record(a)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::CallMeta;

    fn alert() -> LoggedAlert {
        LoggedAlert {
            sequence: 42,
            id: "a1b2".into(),
            tenant: "bank|a".into(),
            call_id: "call=1".into(),
            kind: AlertKind::Escalated,
            severity: Severity::Critical,
            p_spoof: 0.93,
            threshold: 0.6,
            audio_ms: 12_345,
            wall_time_ms: 1_700_000_000_123,
            evidence: Vec::new(),
            model: "m@1".into(),
            transcript_snippet: crate::transcribe::redact(
                "wire it now\nmy card is 4111 1111 1111 1111",
            )
            .0,
            risk: 0.97,
            cues: Vec::new(),
            metadata: CallMeta {
                ani: "+15550100".into(),
                dnis: "+15550199".into(),
                agent: "agent-7".into(),
                labels: Default::default(),
            },
            voice_similarity: None,
            acknowledged: None,
        }
    }

    #[test]
    fn a_critical_alert_is_a_well_formed_rfc5424_cef_line() {
        let m = syslog_message(&alert(), 13, "guard 1.bank");
        assert!(m.starts_with("<106>1 2023-11-14T22:13:20.123Z guard1.bank callguard - alert - CEF:0|callguard|callguard|"), "{m}");
        assert!(m.contains("|escalated|Suspected cloned voice asking for a transfer or codes|9|rt=1700000000123 "), "{m}");
        // Extension values escape '=' and line breaks; the header escapes nothing here.
        assert!(m.contains(" cs1=bank|a "), "{m}");
        assert!(m.contains(" cs2=call\\=1 "), "{m}");
        assert!(m.contains(" cfp1=0.9300 "), "{m}");
        assert!(m.contains(" suser=+15550100 duser=+15550199 "), "{m}");
        assert!(!m.contains('\n'), "one line: {m}");
        let mut quiet = alert();
        quiet.metadata.agent.clear();
        assert!(
            !record(&quiet).contains(" cs4="),
            "empty values are left out"
        );
        assert!(m.contains(" msg=wire it now\\nmy card is "), "{m}");
        assert!(!m.contains("4111"), "no card number in a SIEM: {m}");
    }

    #[test]
    fn header_fields_escape_pipes() {
        let mut s = String::new();
        header_field(&mut s, "a|b\\c");
        assert_eq!(s, "a\\|b\\\\c");
    }
}
