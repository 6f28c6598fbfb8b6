//! Twilio Media Streams text messages into the sans-I/O session (one message per line).
#![no_main]
use std::time::{Duration, Instant};

use callguard::config::TwilioTrack;
use callguard::connect::twilio::{SessionConfig, TwilioSession};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let config = SessionConfig {
        caller_track: TwilioTrack::Inbound,
        max_text_bytes: 64 << 10,
        idle_timeout: Duration::from_secs(30),
    };
    let mut s = TwilioSession::new(config, now);
    for line in String::from_utf8_lossy(data).split('\n') {
        s.handle_text(now, line);
        while s.poll_output().is_some() {}
    }
    s.handle_timeout(now + Duration::from_secs(60));
    while s.poll_output().is_some() {}
});
