//! Recording metadata (application/rs-metadata+xml): parse, merge, and pick the caller.
#![no_main]
use callguard::connect::sip::metadata::{CallerRule, Recording, user_of};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(r) = Recording::parse(text) {
        let labels: Vec<String> = r.stream_labels.values().cloned().collect();
        for rule in [CallerRule::First, CallerRule::Label("1".into())] {
            if let Ok(c) = rule.pick(Some(&r), &labels) {
                let _ = (user_of(&c.aor), user_of(&c.other_aor));
            }
        }
        let mut m = r.clone();
        m.merge(r);
    }
});
