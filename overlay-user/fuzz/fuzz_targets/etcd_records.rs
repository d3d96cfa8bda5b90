//! The registry's etcd values, each input as every kind of record (nodes,
//! networks, endpoints, blocks, conflicts): a record that passes its own
//! validation and writes back the same, or a problem naming the key and
//! the field. Corpus: overlay-user/tests/corpus/records.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(problem) = overlay::json_fuzz::records::check_every_kind(data) {
        panic!("{problem}");
    }
});
