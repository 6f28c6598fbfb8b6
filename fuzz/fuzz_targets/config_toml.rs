//! The config loader: any text either loads or gives problems, never a panic.
#![no_main]
use callguard::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = Config::from_toml(text) {
        let _ = c.validate();
    }
});
