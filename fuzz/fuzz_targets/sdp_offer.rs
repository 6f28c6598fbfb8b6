//! SDP offers (the INVITE's body): parse, answer, and the answer must parse again.
#![no_main]
use callguard::connect::sip::sdp::{Offer, answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(offer) = Offer::parse(text) {
        let ports: Vec<Option<u16>> = (0..offer.streams.len()).map(|i| Some(40_000 + 2 * i as u16)).collect();
        let a = answer(&offer, &ports, "127.0.0.1".parse().unwrap(), 1, 1);
        let back = Offer::parse(&a).expect("our answer parses");
        assert_eq!(back.streams.len(), offer.streams.len());
        let _ = offer.labels();
    }
});
