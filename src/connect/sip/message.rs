//! SIP messages: parsed with `rsip` (start line, headers, body), read through one accessor that
//! also knows RFC 3261's compact header names (rsip keeps `i:`, `v:`... as unknown headers),
//! and answered with responses built as RFC 3261 8.2.6 says (Via, From, Call-ID, CSeq copied;
//! To copied and tagged). A request rsip refuses still gets its 400 when the headers a
//! response needs can be found in it: `salvage` reads just those, by hand, since a parser that
//! refused the message cannot.

use rsip::headers::UntypedHeader;
use rsip::{Header, Headers, SipMessage, StatusCode};

/// Compact forms (RFC 3261 section 7.3.3 and later RFCs) and their full names.
const COMPACT: &[(&str, &str)] = &[
    ("i", "call-id"),
    ("m", "contact"),
    ("e", "content-encoding"),
    ("l", "content-length"),
    ("c", "content-type"),
    ("f", "from"),
    ("s", "subject"),
    ("k", "supported"),
    ("t", "to"),
    ("v", "via"),
    ("o", "event"),
    ("r", "refer-to"),
];

/// What the SRS answers with in `Allow`.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE";

/// A request, with its headers as (lower-case full name, value) pairs.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub uri: String,
    pub fields: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a datagram or stream chunk is not a request we can act on.
#[derive(Debug, thiserror::Error)]
pub enum SipError {
    /// Unreadable; answered with `status` (400, or 505 for a SIP version other than 2.0)
    /// when `reply` could be salvaged, else dropped.
    #[error("malformed SIP message: {reason}")]
    Malformed {
        reason: String,
        status: u16,
        reply: Option<Box<Request>>,
    },
    /// A response (we send no requests that expect them, except BYE): ignored.
    #[error("a SIP response")]
    Response { status: u16, call_id: String },
}

fn canonical(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    COMPACT
        .iter()
        .find(|(short, _)| *short == lower)
        .map_or(lower, |(_, long)| (*long).to_owned())
}

fn fields_of(headers: &Headers) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|h| {
            let line = h.to_string();
            let (name, value) = line.split_once(':')?;
            Some((canonical(name), value.trim().to_owned()))
        })
        .collect()
}

impl Request {
    pub fn parse(bytes: &[u8]) -> Result<Self, SipError> {
        match SipMessage::try_from(bytes) {
            Ok(SipMessage::Request(r)) => {
                let mut req = Self {
                    method: r.method.to_string(),
                    uri: r.uri.to_string(),
                    fields: fields_of(&r.headers),
                    body: r.body,
                };
                if let Some(what) = req.missing() {
                    return Err(SipError::Malformed {
                        reason: format!("no {what} header"),
                        status: 400,
                        reply: (what != "Via").then(|| Box::new(req)),
                    });
                }
                let problem = req.inconsistency();
                match problem {
                    None => Ok(req),
                    Some(reason) => {
                        req.body.clear();
                        Err(SipError::Malformed {
                            reason,
                            status: 400,
                            reply: Some(Box::new(req)),
                        })
                    }
                }
            }
            Ok(SipMessage::Response(r)) => {
                let fields = fields_of(&r.headers);
                let call_id = fields
                    .iter()
                    .find(|(n, _)| n == "call-id")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                Err(SipError::Response {
                    status: r.status_code.code(),
                    call_id,
                })
            }
            Err(e) => {
                let salvaged = salvage(bytes);
                let status = salvaged.as_ref().map_or(400, |(_, status)| *status);
                Err(SipError::Malformed {
                    reason: if status == 505 {
                        "only SIP/2.0 is spoken here".to_owned()
                    } else {
                        e.to_string()
                    },
                    status,
                    reply: salvaged.map(|(req, _)| Box::new(req)),
                })
            }
        }
    }

    /// The first header missing of those every request needs (RFC 3261 section 8.1.1).
    fn missing(&self) -> Option<&'static str> {
        ["Via", "From", "To", "Call-ID", "CSeq"]
            .into_iter()
            .find(|h| self.header(h).is_none_or(str::is_empty))
    }

    /// What RFC 3261 says makes a well-formed request bad: a CSeq that is not "number METHOD"
    /// of this method (section 8.1.1.5), a Content-Length that is not the body's (18.3; a
    /// datagram's extra bytes are cut off).
    fn inconsistency(&mut self) -> Option<String> {
        match self.cseq() {
            Some((_, m)) if m == self.method => {}
            Some((_, m)) => {
                return Some(format!(
                    "CSeq method {m} is not the request's {}",
                    self.method
                ));
            }
            None => return Some("CSeq is not a number and a method".into()),
        }
        if let Some(v) = self.header("content-length") {
            let Ok(n) = v.trim().parse::<usize>() else {
                return Some(format!("Content-Length {v:?} is not a number"));
            };
            if n > self.body.len() {
                return Some(format!(
                    "Content-Length {n} is more than the {} bytes of body",
                    self.body.len()
                ));
            }
            self.body.truncate(n);
        }
        None
    }

    /// The first value of a header (by its full name, any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, comma-separated lists split (not inside quotes or <>).
    pub fn header_values(&self, name: &str) -> Vec<String> {
        let name = name.to_ascii_lowercase();
        self.fields
            .iter()
            .filter(|(n, _)| *n == name)
            .flat_map(|(_, v)| split_list(v))
            .collect()
    }

    pub fn call_id(&self) -> &str {
        self.header("call-id").unwrap_or_default()
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, String)> {
        let (n, m) = self.header("cseq")?.split_once(char::is_whitespace)?;
        Some((n.trim().parse().ok()?, m.trim().to_ascii_uppercase()))
    }

    /// The top Via's branch, which names the transaction.
    pub fn branch(&self) -> String {
        self.header_values("via")
            .first()
            .and_then(|v| param(v, "branch"))
            .unwrap_or_default()
    }

    pub fn to_tag(&self) -> Option<String> {
        param(self.header("to")?, "tag")
    }

    /// Whether the request carries an option tag in `Require` (or `Supported` when `supported`).
    pub fn has_option(&self, header: &str, tag: &str) -> bool {
        self.header_values(header)
            .iter()
            .any(|v| v.eq_ignore_ascii_case(tag))
    }

    /// The body's MIME type, lower-case, without parameters.
    pub fn content_type(&self) -> String {
        self.header("content-type")
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    }

    /// A response to this request. `to_tag` is added to To when it has none.
    pub fn response(
        &self,
        status: u16,
        reason: Option<&str>,
        to_tag: Option<&str>,
        extra: &[(&str, String)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Vec<u8> {
        let mut headers = Headers::default();
        for v in self.header_values("via") {
            headers.push(Header::Via(rsip::headers::Via::new(v)));
        }
        let from = self.header("from").unwrap_or_default();
        headers.push(Header::From(rsip::headers::From::new(from)));
        let mut to = self.header("to").unwrap_or_default().to_owned();
        if let Some(tag) = to_tag
            && param(&to, "tag").is_none()
        {
            to.push_str(";tag=");
            to.push_str(tag);
        }
        headers.push(Header::To(rsip::headers::To::new(to)));
        headers.push(Header::CallId(rsip::headers::CallId::new(self.call_id())));
        headers.push(Header::CSeq(rsip::headers::CSeq::new(
            self.header("cseq").unwrap_or_default(),
        )));
        headers.push(Header::Server(rsip::headers::Server::new(concat!(
            "callguard/",
            env!("CARGO_PKG_VERSION")
        ))));
        for (name, value) in extra {
            headers.push(Header::Other((*name).into(), value.clone()));
        }
        let body = match body {
            Some((ctype, bytes)) => {
                headers.push(Header::ContentType(rsip::headers::ContentType::new(ctype)));
                bytes
            }
            None => Vec::new(),
        };
        headers.push(Header::ContentLength(rsip::headers::ContentLength::new(
            body.len().to_string(),
        )));
        let status_code = match reason {
            Some(r) => StatusCode::Other(status, r.replace(['\r', '\n'], " ")),
            None => StatusCode::from(status),
        };
        rsip::Response {
            status_code,
            version: rsip::Version::V2,
            headers,
            body,
        }
        .to_string()
        .into_bytes()
    }
}

/// A header parameter's value: `param("<sip:a@b>;tag=x", "tag")` is "x".
pub fn param(value: &str, name: &str) -> Option<String> {
    let after = value.rsplit_once('>').map_or(value, |(_, rest)| rest);
    after.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

fn split_list(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, ch) in v.char_indices() {
        match ch {
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if !quoted && depth <= 0 => {
                out.push(v[start..i].trim().to_owned());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(v[start..].trim().to_owned());
    out.retain(|s| !s.is_empty());
    out
}

/// The start line and the headers a response needs, from a message the parser refused.
/// What can be read of a request rsip refused, to answer it: the request and the status to
/// answer with (505 Version Not Supported for another SIP version, RFC 3261 section 8.2.2 and
/// RFC 4475 3.1.2.16 badvers; else 400).
fn salvage(bytes: &[u8]) -> Option<(Request, u16)> {
    let text = std::str::from_utf8(bytes.get(..bytes.len().min(16 << 10))?).ok()?;
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let mut start = lines.next()?.split_whitespace();
    let method = start.next()?.to_owned();
    let uri = start.next()?.to_owned();
    let version = start.next()?;
    if !version.starts_with("SIP/") || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let status = if version == "SIP/2.0" { 400 } else { 505 };
    let mut fields = Vec::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let name = canonical(name);
            if ["via", "from", "to", "call-id", "cseq"].contains(&name.as_str()) {
                fields.push((name, value.trim().to_owned()));
            }
        }
    }
    let req = Request {
        method,
        uri,
        fields,
        body: Vec::new(),
    };
    req.missing().is_none().then_some((req, status))
}

/// Where one message ends in a stream (TCP/TLS): the header block and `Content-Length`
/// bytes. `Ok(None)`: more bytes are needed; `Err`: the stream cannot be framed.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, String> {
    // Keep-alive CRLFs between messages (RFC 5626 section 3.5.1) are skipped by the caller.
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > max {
            Err(format!("no end of headers in {max} bytes"))
        } else {
            Ok(None)
        };
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut length = None;
    for line in head.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':')
            && canonical(name) == "content-length"
        {
            length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {:?}", value.trim()))?,
            );
        }
    }
    // Over a stream, Content-Length is required (RFC 3261 section 18.3).
    let length = length.ok_or("no Content-Length on a stream transport")?;
    let total = end + 4 + length;
    if total > max {
        return Err(format!("a message of {total} bytes is over {max}"));
    }
    Ok((buf.len() >= total).then_some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &str = "OPTIONS sip:srs@192.0.2.5 SIP/2.0\r\n\
v: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
t: <sip:srs@192.0.2.5>\r\n\
f: <sip:sbc@192.0.2.10>;tag=1928301774\r\n\
i: a84b4c76e66710@192.0.2.10\r\n\
CSeq: 63104 OPTIONS\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn compact_headers_are_read_and_the_response_copies_them() {
        let r = Request::parse(OPTIONS.as_bytes()).unwrap();
        assert_eq!(r.method, "OPTIONS");
        assert_eq!(r.call_id(), "a84b4c76e66710@192.0.2.10");
        assert_eq!(r.branch(), "z9hG4bK776asdhds");
        assert_eq!(r.cseq(), Some((63104, "OPTIONS".into())));
        let resp =
            String::from_utf8(r.response(200, None, Some("abc"), &[("Allow", ALLOW.into())], None))
                .unwrap();
        assert!(resp.starts_with("SIP/2.0 200 OK\r\n"), "{resp}");
        assert!(
            resp.contains("Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds"),
            "{resp}"
        );
        assert!(resp.contains("To: <sip:srs@192.0.2.5>;tag=abc"), "{resp}");
        assert!(
            resp.contains("Call-ID: a84b4c76e66710@192.0.2.10"),
            "{resp}"
        );
        assert!(resp.contains("CSeq: 63104 OPTIONS"), "{resp}");
        assert!(resp.contains("Content-Length: 0"), "{resp}");
    }

    #[test]
    fn a_custom_reason_phrase_is_kept() {
        let r = Request::parse(OPTIONS.as_bytes()).unwrap();
        let resp =
            String::from_utf8(r.response(400, Some("No recording metadata"), None, &[], None))
                .unwrap();
        assert!(
            resp.starts_with("SIP/2.0 400 No recording metadata\r\n"),
            "{resp}"
        );
    }

    #[test]
    fn a_request_without_call_id_is_malformed_but_answerable() {
        let text = OPTIONS.replace("i: a84b4c76e66710@192.0.2.10\r\n", "");
        match Request::parse(text.as_bytes()) {
            Err(SipError::Malformed { reason, reply, .. }) => {
                assert!(reason.contains("Call-ID"), "{reason}");
                assert!(reply.is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_malformed_and_unanswerable() {
        match Request::parse(b"\x00\x01hello") {
            Err(SipError::Malformed { reply, .. }) => assert!(reply.is_none()),
            other => panic!("{other:?}"),
        }
    }

    /// Messages in the spirit of RFC 4475 ("SIP Torture Test Messages"): each parses or is
    /// refused without a panic, and what can be answered gets a well-formed 400.
    #[test]
    fn torture_messages_are_answered_or_dropped_never_a_panic() {
        let base = "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw\r\nTo: sip:j.user@example.com\r\n\
From: sip:caller@example.net;tag=134161461246\r\nMax-Forwards: 7\r\nCall-ID: torture.0ha0isndaksdj\r\n";
        let cases: Vec<(String, Option<&str>)> = vec![
            // 3.1.2.4 ncl: negative Content-Length.
            (format!("INVITE sip:user@example.com SIP/2.0\r\n{base}CSeq: 8 INVITE\r\nContent-Length: -999\r\n\r\n"), Some("400")),
            // 3.1.2.2 clerr: Content-Length larger than the body.
            (format!("INVITE sip:user@example.com SIP/2.0\r\n{base}CSeq: 8 INVITE\r\nContent-Length: 9999\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n"), Some("400")),
            // 3.1.2.11 mismatch01: CSeq method is not the request's.
            (format!("OPTIONS sip:user@example.com SIP/2.0\r\n{base}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"), Some("400")),
            // 3.1.2.12 mismatch02: an unknown method.
            (format!("NEWMETHOD sip:user@example.com SIP/2.0\r\n{base}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"), None),
            // 3.1.2.16 badvers: SIP/7.0 gets 505 Version Not Supported.
            (format!("OPTIONS sip:t.watson@example.org SIP/7.0\r\n{base}CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"), Some("505")),
            // 3.1.2.1 badinv01: empty Via parameters.
            ("INVITE sip:user@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.15;;,;,,\r\nTo: sip:j.user@example.com\r\nFrom: sip:caller@example.net;tag=1\r\nCall-ID: badinv01\r\nCSeq: 8 INVITE\r\nContent-Length: 0\r\n\r\n".into(), None),
            // 3.1.2.6 quotbal: an unterminated quoted string.
            (format!("INVITE sip:user@example.com SIP/2.0\r\n{base}CSeq: 8 INVITE\r\nContact: \"Mr J. User <sip:j.user@192.0.2.5>\r\nContent-Length: 0\r\n\r\n"), None),
            // A response with a huge status code (3.1.2.13 bigcode).
            ("SIP/2.0 4294967301 better not break the receiver\r\nVia: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\r\nCall-ID: bigcode\r\nCSeq: 353494 INVITE\r\nContent-Length: 0\r\n\r\n".into(), None),
            // Line folding and odd whitespace (3.1.1.1 wsinv, simplified).
            ("OPTIONS sip:user@example.com SIP/2.0\r\nVia  :  SIP/2.0/UDP 192.0.2.2;branch=390skdjuw\r\nTO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\nfrom   : sip:jdrosen@example.com;tag=98asjd8\r\nCall-ID: wsinv.ndaksdj@192.0.2.1\r\ncseq: 0009\r\n  OPTIONS\r\nContent-Length: 0\r\n\r\n".into(), None),
            // Truncated in the middle of the headers, and binary garbage.
            ("INVITE sip:user@example.com SIP/2.0\r\nVia: SIP/2.0/UDP".into(), None),
            (String::from_utf8_lossy(&[0xff, 0xfe, 0x00, 0x41, 0x0d, 0x0a]).into_owned(), None),
        ];
        for (text, want) in cases {
            match Request::parse(text.as_bytes()) {
                Ok(r) => {
                    // Parsed after all: it must still answer cleanly.
                    let resp = String::from_utf8(r.response(200, None, None, &[], None)).unwrap();
                    assert!(resp.starts_with("SIP/2.0 200"), "{text:?}");
                }
                Err(SipError::Malformed {
                    reason,
                    status,
                    reply,
                }) => {
                    if let Some(code) = want {
                        let r = reply
                            .unwrap_or_else(|| panic!("{text:?}: {reason} should be answerable"));
                        let resp =
                            String::from_utf8(r.response(status, Some(&reason), None, &[], None))
                                .unwrap();
                        assert!(resp.starts_with(&format!("SIP/2.0 {code} ")), "{resp}");
                        assert!(resp.ends_with("Content-Length: 0\r\n\r\n"), "{resp}");
                    }
                }
                Err(SipError::Response { .. }) => assert!(text.starts_with("SIP/2.0")),
            }
        }
    }

    #[test]
    fn params_and_lists() {
        assert_eq!(param("<sip:a@b;lr>;tag=x1", "tag").as_deref(), Some("x1"));
        assert_eq!(param("<sip:a@b;tag=no>", "tag"), None);
        assert_eq!(
            split_list("a, \"x,y\" <sip:c>, d"),
            ["a", "\"x,y\" <sip:c>", "d"]
        );
    }

    #[test]
    fn streams_are_framed_by_content_length() {
        let msg = OPTIONS.replace("Content-Length: 0", "Content-Length: 4") + "abcd";
        let b = msg.as_bytes();
        assert_eq!(frame_len(&b[..b.len() - 1], 1 << 16), Ok(None));
        assert_eq!(frame_len(b, 1 << 16), Ok(Some(b.len())));
        assert!(
            frame_len(
                OPTIONS.replace("Content-Length: 0\r\n", "").as_bytes(),
                1 << 16
            )
            .is_err()
        );
        assert!(frame_len(&[b'a'; 100], 50).is_err());
    }
}
