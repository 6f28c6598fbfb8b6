//! Asterisk AudioSocket bytes into the sans-I/O session, in arbitrary splits.
#![no_main]
use std::time::{Duration, Instant};

use callguard::connect::audiosocket::AudioSocketSession;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut s = AudioSocketSession::new(now, Duration::from_secs(30));
    let split = data.first().copied().unwrap_or(1).max(1) as usize;
    for chunk in data.chunks(split) {
        s.handle_bytes(now, chunk);
        while s.poll_output().is_some() {}
    }
    s.handle_eof();
    while s.poll_output().is_some() {}
});
