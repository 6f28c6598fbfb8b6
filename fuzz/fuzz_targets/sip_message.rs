//! SIP messages as they arrive on the SIPREC listener (UDP datagrams and TCP stream framing):
//! parse, and answer whatever parses or can be salvaged.
#![no_main]
use callguard::connect::sip::message::{Request, SipError, frame_len};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = frame_len(data, 64 << 10);
    match Request::parse(data) {
        Ok(r) => {
            let _ = r.response(200, None, Some("tag"), &[("Allow", "INVITE".into())], None);
            let _ = (r.branch(), r.cseq(), r.to_tag(), r.content_type());
            let _ = r.header_values("via");
        }
        Err(SipError::Malformed { reply: Some(r), reason, status }) => {
            assert!(status == 400 || status == 505, "{status}");
            let _ = r.response(status, Some(&reason), None, &[], None);
        }
        Err(_) => {}
    }
});
