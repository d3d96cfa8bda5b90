//! The local API's request bodies, each input as every request (networks,
//! endpoints, addresses): accepted whole, or HTTP 400 naming the field and
//! the value. Corpus: overlay-user/tests/corpus/api.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(problem) = overlay::json_fuzz::api_requests::check_every_request(data) {
        panic!("{problem}");
    }
});
