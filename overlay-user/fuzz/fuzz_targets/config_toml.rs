//! The TOML configuration (`Config::parse`): parses, or is refused naming
//! each field and why, or as TOML with the line and column; never panics.
//! Corpus: overlay-user/tests/corpus/config.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(problem) = overlay::config::fuzz_tests::check(text) {
            panic!("{problem}");
        }
    }
});
