//! The Docker plugin's request bodies, each input as every call of the
//! network and IPAM drivers: parsed, or a 4xx naming the field and the
//! value. Corpus: overlay-user/tests/corpus/docker.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(problem) = overlay::docker::fuzz_tests::check_every_call(data) {
        panic!("{problem}");
    }
});
