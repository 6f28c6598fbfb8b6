//! Genesys AudioHook messages into the sans-I/O session: lines are text messages, a line that
//! starts with '#' is a binary audio frame of its bytes.
#![no_main]
use std::time::{Duration, Instant};

use callguard::connect::audiohook::{AudioHookSession, SessionConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let config = SessionConfig {
        max_text_bytes: 64 << 10,
        idle_timeout: Duration::from_secs(30),
        ping_burst: 10.0,
        pings_per_s: 1.0,
    };
    let mut s = AudioHookSession::new(config, "e160e428-53e2-487c-977d-96989bf5c99d", now);
    for line in data.split(|b| *b == b'\n') {
        match line.strip_prefix(b"#") {
            Some(audio) => s.handle_binary(now, audio),
            None => s.handle_text(now, &String::from_utf8_lossy(line)),
        }
        while s.poll_output().is_some() {}
    }
    s.handle_closed();
    while s.poll_output().is_some() {}
});
