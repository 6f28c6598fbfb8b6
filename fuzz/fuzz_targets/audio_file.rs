//! Audio files as `scan` and the eval read them (WAV PCM/float/G.711, FLAC via symphonia):
//! open and read to the end, whatever the bytes.
#![no_main]
use callguard::audio::file::FileSource;
use callguard::audio::{AudioSource, Read};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("callguard-fuzz-{}.wav", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(mut src) = FileSource::open(&path) {
        let mut out = Vec::new();
        for _ in 0..10_000 {
            out.clear();
            match src.read(&mut out) {
                Ok(Read::End) | Err(_) => break,
                Ok(Read::Samples) => {}
            }
        }
    }
});
