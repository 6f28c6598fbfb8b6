//! Recording metadata (`application/rs-metadata+xml`, RFC 7865 / RFC 7866 section 10): who
//! the participants are, which streams each sends, and the labels that tie the streams to the
//! SDP's `a=label` lines. Parsed with `roxmltree`; both the RFC's `participantstreamassoc`
//! and the older `<send>` inside `<participant>` (as some SBCs still send) are read.

use std::collections::BTreeMap;

const NS: &str = "urn:ietf:params:xml:ns:recording:1";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Participant {
    pub id: String,
    pub aor: String,
    pub name: String,
    /// The streams it sends (stream ids).
    pub sends: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recording {
    pub session_id: String,
    pub sip_session_id: String,
    /// In document order (an SRC lists the calling party first).
    pub participants: Vec<Participant>,
    /// Stream id -> label.
    pub stream_labels: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetadataError {
    #[error("recording metadata is not XML: {0}")]
    Xml(String),
    #[error("recording metadata: the root element is <{0}>, not <recording>")]
    Root(String),
}

impl Recording {
    pub fn parse(text: &str) -> Result<Self, MetadataError> {
        let doc =
            roxmltree::Document::parse(text).map_err(|e| MetadataError::Xml(e.to_string()))?;
        let root = doc.root_element();
        if root.tag_name().name() != "recording" {
            return Err(MetadataError::Root(root.tag_name().name().into()));
        }
        let mut r = Recording::default();
        let ours = |n: &roxmltree::Node| {
            n.is_element() && n.tag_name().namespace().is_none_or(|ns| ns == NS)
        };
        let text_of = |n: roxmltree::Node, name: &str| {
            n.children()
                .find(|c| c.is_element() && c.tag_name().name() == name)
                .and_then(|c| c.text())
                .map(|t| t.trim().to_owned())
        };
        for n in root.children().filter(ours) {
            match n.tag_name().name() {
                "session" if r.session_id.is_empty() => {
                    r.session_id = n.attribute("session_id").unwrap_or_default().into();
                    r.sip_session_id = text_of(n, "sipSessionID").unwrap_or_default();
                }
                "participant" => {
                    let id = n.attribute("participant_id").unwrap_or_default().to_owned();
                    let name_id = n
                        .children()
                        .find(|c| c.is_element() && c.tag_name().name() == "nameID");
                    let p = r.participant(&id);
                    if let Some(nid) = name_id {
                        p.aor = nid.attribute("aor").unwrap_or_default().into();
                        p.name = text_of(nid, "name").unwrap_or_default();
                    }
                    for s in n.children().filter(|c| c.tag_name().name() == "send") {
                        let s = s.text().unwrap_or_default().trim().to_owned();
                        if !s.is_empty() && !p.sends.contains(&s) {
                            p.sends.push(s);
                        }
                    }
                }
                "stream" => {
                    let id = n.attribute("stream_id").unwrap_or_default().to_owned();
                    if let Some(label) = text_of(n, "label") {
                        r.stream_labels.insert(id, label);
                    }
                }
                "participantstreamassoc" => {
                    let id = n.attribute("participant_id").unwrap_or_default().to_owned();
                    let p = r.participant(&id);
                    for s in n.children().filter(|c| c.tag_name().name() == "send") {
                        let s = s.text().unwrap_or_default().trim().to_owned();
                        if !s.is_empty() && !p.sends.contains(&s) {
                            p.sends.push(s);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(r)
    }

    fn participant(&mut self, id: &str) -> &mut Participant {
        let at = match self.participants.iter().position(|p| p.id == id) {
            Some(i) => i,
            None => {
                self.participants.push(Participant {
                    id: id.into(),
                    ..Participant::default()
                });
                self.participants.len() - 1
            }
        };
        &mut self.participants[at]
    }

    /// Partial metadata (a re-INVITE's update) merged into what was known.
    pub fn merge(&mut self, newer: Recording) {
        if !newer.session_id.is_empty() {
            self.session_id = newer.session_id;
            self.sip_session_id = newer.sip_session_id;
        }
        for p in newer.participants {
            let known = self.participant(&p.id);
            if !p.aor.is_empty() {
                known.aor = p.aor;
                known.name = p.name;
            }
            for s in p.sends {
                if !known.sends.contains(&s) {
                    known.sends.push(s);
                }
            }
        }
        self.stream_labels.extend(newer.stream_labels);
    }

    /// The labels of the streams a participant sends.
    pub fn labels_sent_by(&self, p: &Participant) -> Vec<&str> {
        p.sends
            .iter()
            .filter_map(|s| self.stream_labels.get(s).map(String::as_str))
            .collect()
    }
}

/// How the caller is told from the agent.
#[derive(Debug, Clone)]
pub enum CallerRule {
    Label(String),
    Aor(regex::Regex),
    NotAgent(regex::Regex),
    /// The default: the external party. A participant is external when its address is a
    /// telephone number (a `tel:` URI or an E.164 user part, `+` and 7 or more digits) or, with
    /// `local_domains` set, when its host is none of them (nor below one); an internal extension
    /// (6 digits or fewer) or a local host is not. With no participant told external, the first
    /// listed one that is not known internal is taken (SRCs list the calling party first).
    External {
        local_domains: Vec<String>,
    },
}

/// Whether a participant's address is the external party's: `Some(true)` external,
/// `Some(false)` internal, `None` it cannot be told.
pub fn is_external(aor: &str, local_domains: &[String]) -> Option<bool> {
    let aor = aor.trim().trim_start_matches('<').trim_end_matches('>');
    let host = host_of(aor);
    if !local_domains.is_empty() && !host.is_empty() {
        let local = local_domains.iter().any(|d| {
            let d = d.to_ascii_lowercase();
            host == d || host.ends_with(&format!(".{d}"))
        });
        return Some(!local);
    }
    let user = user_of(aor);
    let digits = user.trim_start_matches('+');
    let numeric = !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit() || c == '-');
    if aor.to_ascii_lowercase().starts_with("tel:")
        || (user.starts_with('+') && numeric && digits.len() >= 7)
    {
        return Some(true);
    }
    if numeric && !user.starts_with('+') && digits.len() <= 6 {
        return Some(false);
    }
    None
}

/// The host of a SIP URI, lower-cased, without port or parameters ("" for a `tel:` URI).
pub fn host_of(aor: &str) -> String {
    let aor = aor.trim().trim_start_matches('<').trim_end_matches('>');
    let Some((_, after)) = aor.split_once('@') else {
        return String::new();
    };
    let host = after.split([';', '?', '>']).next().unwrap_or_default();
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or_default()
    };
    host.to_ascii_lowercase()
}

/// The caller as the metadata and the rule name them.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub label: String,
    pub participant_id: String,
    pub aor: String,
    /// The other party's address (the number the caller dialled, on an inbound call).
    pub other_aor: String,
}

impl CallerRule {
    /// The caller's stream label among `labels` (the SDP's), or why none fits.
    pub fn pick(&self, rec: Option<&Recording>, labels: &[String]) -> Result<Caller, String> {
        if let Self::Label(want) = self {
            if !labels.contains(want) {
                return Err(format!("no stream is labelled {want:?}"));
            }
            let rec = rec.cloned().unwrap_or_default();
            let owner = rec
                .participants
                .iter()
                .find(|p| rec.labels_sent_by(p).contains(&want.as_str()));
            let other = rec
                .participants
                .iter()
                .find(|p| owner.is_none_or(|o| o.id != p.id));
            return Ok(Caller {
                label: want.clone(),
                participant_id: owner.map(|o| o.id.clone()).unwrap_or_default(),
                aor: owner.map(|o| o.aor.clone()).unwrap_or_default(),
                other_aor: other.map(|o| o.aor.clone()).unwrap_or_default(),
            });
        }
        let rec = rec.ok_or("no recording metadata yet")?;
        let sending: Vec<&Participant> = rec
            .participants
            .iter()
            .filter(|p| {
                rec.labels_sent_by(p)
                    .iter()
                    .any(|l| labels.iter().any(|x| x == l))
            })
            .collect();
        let caller = match self {
            Self::Aor(re) => sending.iter().find(|p| re.is_match(&p.aor)),
            Self::NotAgent(re) => sending.iter().find(|p| !re.is_match(&p.aor)),
            Self::External { local_domains } => sending
                .iter()
                .find(|p| is_external(&p.aor, local_domains) == Some(true))
                .or_else(|| {
                    sending
                        .iter()
                        .find(|p| is_external(&p.aor, local_domains).is_none())
                })
                .or(sending.first()),
            Self::Label(_) => unreachable!("handled above"),
        }
        .ok_or(
            "no participant of the metadata sends a stream of the SDP that fits the caller rule",
        )?;
        let label = rec
            .labels_sent_by(caller)
            .into_iter()
            .find(|l| labels.iter().any(|x| x == l))
            .unwrap_or_default()
            .to_owned();
        let other = rec.participants.iter().find(|p| p.id != caller.id);
        Ok(Caller {
            label,
            participant_id: caller.id.clone(),
            aor: caller.aor.clone(),
            other_aor: other.map(|o| o.aor.clone()).unwrap_or_default(),
        })
    }
}

/// The user part of a SIP or tel URI: "sip:+15551234@sbc.example.com" -> "+15551234".
pub fn user_of(aor: &str) -> String {
    let rest = aor
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .split_once(':')
        .map_or(aor, |(_, r)| r);
    let user = rest.split(['@', ';', '?', '>']).next().unwrap_or_default();
    user.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7865 section 8.2's example, cut to what is read.
    pub(crate) const RFC_EXAMPLE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns='urn:ietf:params:xml:ns:recording:1'>
  <datamode>complete</datamode>
  <session session_id="hVpd7YQgRW2nD22h7q60JQ==">
    <sipSessionID>ab30317f1a784dc48ff824d0d3715d86;remote=47755a9de7794ba387653f2099600ef2</sipSessionID>
  </session>
  <participant participant_id="srfBElmCRp2QB23b7Mpk0w==">
    <nameID aor="sip:+15551230001@sbc.example.com"><name xml:lang="en">Caller</name></nameID>
  </participant>
  <participant participant_id="zSfPoSvdSDCmU3A3TRDxAw==">
    <nameID aor="sip:agent-7@cc.bank.example"/>
  </participant>
  <stream stream_id="UAAMm5GRQKSCMVvLyl4rFw==" session_id="hVpd7YQgRW2nD22h7q60JQ=="><label>1</label></stream>
  <stream stream_id="i1Pz3to5hGk8fuXl+PbwCw==" session_id="hVpd7YQgRW2nD22h7q60JQ=="><label>2</label></stream>
  <participantstreamassoc participant_id="srfBElmCRp2QB23b7Mpk0w==">
    <send>UAAMm5GRQKSCMVvLyl4rFw==</send><recv>i1Pz3to5hGk8fuXl+PbwCw==</recv>
  </participantstreamassoc>
  <participantstreamassoc participant_id="zSfPoSvdSDCmU3A3TRDxAw==">
    <send>i1Pz3to5hGk8fuXl+PbwCw==</send><recv>UAAMm5GRQKSCMVvLyl4rFw==</recv>
  </participantstreamassoc>
</recording>"#;

    fn labels() -> Vec<String> {
        vec!["1".into(), "2".into()]
    }

    #[test]
    fn participants_streams_and_labels_are_read() {
        let r = Recording::parse(RFC_EXAMPLE).unwrap();
        assert_eq!(r.session_id, "hVpd7YQgRW2nD22h7q60JQ==");
        assert_eq!(r.participants.len(), 2);
        assert_eq!(r.labels_sent_by(&r.participants[0]), ["1"]);
        assert_eq!(r.labels_sent_by(&r.participants[1]), ["2"]);
        assert_eq!(r.participants[0].name, "Caller");
    }

    #[test]
    fn each_rule_picks_the_caller() {
        let r = Recording::parse(RFC_EXAMPLE).unwrap();
        let external = CallerRule::External {
            local_domains: Vec::new(),
        };
        let first = external.pick(Some(&r), &labels()).unwrap();
        assert_eq!(
            (first.label.as_str(), user_of(&first.aor)),
            ("1", "+15551230001".into())
        );
        assert_eq!(user_of(&first.other_aor), "agent-7");
        let agent = regex::Regex::new("@cc\\.bank\\.example$").unwrap();
        assert_eq!(
            CallerRule::NotAgent(agent.clone())
                .pick(Some(&r), &labels())
                .unwrap(),
            first
        );
        let by_aor = CallerRule::Aor(agent).pick(Some(&r), &labels()).unwrap();
        assert_eq!(by_aor.label, "2");
        let by_label = CallerRule::Label("2".into())
            .pick(Some(&r), &labels())
            .unwrap();
        assert_eq!(by_label.participant_id, "zSfPoSvdSDCmU3A3TRDxAw==");
        assert!(
            CallerRule::Label("9".into())
                .pick(Some(&r), &labels())
                .is_err()
        );
        assert!(external.pick(None, &labels()).is_err());
    }

    #[test]
    fn the_external_party_is_the_caller_wherever_it_is_listed() {
        // The agent listed first: the E.164 number is still the caller.
        let swapped = RFC_EXAMPLE
            .replace("sip:+15551230001@sbc.example.com", "TMP")
            .replace(
                "sip:agent-7@cc.bank.example",
                "sip:+15551230001@sbc.example.com",
            )
            .replace("TMP", "sip:agent-7@cc.bank.example");
        let r = Recording::parse(&swapped).unwrap();
        let rule = CallerRule::External {
            local_domains: Vec::new(),
        };
        let c = rule.pick(Some(&r), &labels()).unwrap();
        assert_eq!(
            (c.label.as_str(), user_of(&c.aor)),
            ("2", "+15551230001".into())
        );
        // An extension is internal; with local domains, the host decides.
        let ext = RFC_EXAMPLE.replace("sip:agent-7@cc.bank.example", "sip:4711@pbx");
        let ext = ext
            .replace("sip:+15551230001@sbc.example.com", "TMP")
            .replace("sip:4711@pbx", "sip:+15551230001@sbc.example.com")
            .replace("TMP", "sip:4711@pbx");
        let c = rule
            .pick(Some(&Recording::parse(&ext).unwrap()), &labels())
            .unwrap();
        assert_eq!(user_of(&c.aor), "+15551230001");
        let local = CallerRule::External {
            local_domains: vec!["bank.example".into()],
        };
        let named = RFC_EXAMPLE.replace(
            "sip:+15551230001@sbc.example.com",
            "sip:alice@customer.example",
        );
        let c = local
            .pick(Some(&Recording::parse(&named).unwrap()), &labels())
            .unwrap();
        assert_eq!(user_of(&c.aor), "alice");
        assert_eq!(
            is_external("sip:agent-7@cc.bank.example", &["bank.example".into()]),
            Some(false)
        );
        assert_eq!(
            is_external(
                "sip:x@bank.example:5061;transport=tls",
                &["bank.example".into()]
            ),
            Some(false)
        );
        assert_eq!(
            is_external("sip:x@evilbank.example", &["bank.example".into()]),
            Some(true)
        );
        assert_eq!(is_external("tel:+44-20-7946-0000", &[]), Some(true));
        assert_eq!(is_external("sip:agent-7@cc.bank.example", &[]), None);
        assert_eq!(is_external("sip:200@pbx", &[]), Some(false));
    }

    #[test]
    fn the_older_send_inside_participant_form_is_read() {
        let text = r#"<recording xmlns="urn:ietf:params:xml:ns:recording:1">
          <participant participant_id="a"><nameID aor="sip:1000@x"/><send>s1</send></participant>
          <stream stream_id="s1"><label>7</label></stream></recording>"#;
        let r = Recording::parse(text).unwrap();
        assert_eq!(r.labels_sent_by(&r.participants[0]), ["7"]);
    }

    #[test]
    fn bad_xml_is_an_error() {
        assert!(matches!(
            Recording::parse("<recording>"),
            Err(MetadataError::Xml(_))
        ));
        assert!(matches!(
            Recording::parse("<other/>"),
            Err(MetadataError::Root(_))
        ));
    }

    #[test]
    fn users_of_uris() {
        assert_eq!(
            user_of("sip:+15551234@sbc.example.com;user=phone"),
            "+15551234"
        );
        assert_eq!(user_of("tel:+15551234"), "+15551234");
        assert_eq!(user_of("<sips:bob@b.example>"), "bob");
    }
}
