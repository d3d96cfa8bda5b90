//! The CNI plugin's stdin, read with the variables of every command (ADD,
//! DEL, CHECK, STATUS, GC): taken, or a CNI error whose code says what is
//! wrong and which names the key. Corpus: overlay-user/tests/corpus/cni.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for env in overlay::json_fuzz::cni_input::ENVIRONMENTS {
        if let Some(problem) = overlay::json_fuzz::cni_input::check_invocation(env.as_bytes(), data) {
            panic!("with {env}: {problem}");
        }
    }
});
