//! The evaluation manifest (`callguard eval`, `calibrate`): any text gives rows or a list of
//! the rows that are wrong, never a panic.
#![no_main]
use callguard::eval::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Manifest::parse(text, std::path::Path::new("/nonexistent"));
});
