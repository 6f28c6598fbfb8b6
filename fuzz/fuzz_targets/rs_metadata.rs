//! Recording metadata (application/rs-metadata+xml): parse, merge, and pick the caller.
#![no_main]
use callguard::connect::sip::metadata::{CallerRule, Recording, host_of, is_external, user_of};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(r) = Recording::parse(text) {
        let labels: Vec<String> = r.stream_labels.values().cloned().collect();
        let rules = [
            CallerRule::External { local_domains: Vec::new() },
            CallerRule::External { local_domains: vec!["bank.example".into()] },
            CallerRule::Label("1".into()),
        ];
        for rule in rules {
            if let Ok(c) = rule.pick(Some(&r), &labels) {
                let _ = (user_of(&c.aor), user_of(&c.other_aor), host_of(&c.aor));
                let _ = is_external(&c.other_aor, &["bank.example".into()]);
            }
        }
        let mut m = r.clone();
        m.merge(r);
    }
});
