//! libFuzzer driver of the `server_request` target (crates/lumina-fuzz/src/targets.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = lumina_fuzz::target("server_request") {
        let _ = target.run(data);
    }
});
