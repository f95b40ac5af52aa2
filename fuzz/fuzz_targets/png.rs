//! libFuzzer driver of the `png` target (crates/lumina-fuzz/src/targets.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(target) = lumina_fuzz::target("png") {
        let _ = target.run(data);
    }
});
