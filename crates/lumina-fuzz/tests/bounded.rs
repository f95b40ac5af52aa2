//! The bounded fuzz run of `cargo test`: every target on every file of its corpus and its
//! regressions as they are, then seeded mutations of them — bytes overwritten in the first
//! 4 KiB (headers), random truncation, inserted bytes. A panic fails the test with the target,
//! the input, the seed and where the mutated input was kept. `LUMINA_FUZZ_ITERATIONS` sets the
//! mutations per target (400 by default; README, Fuzzing); cargo-fuzz runs the same targets
//! without a bound.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lumina_fuzz::{Target, TARGETS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn iterations() -> usize {
    std::env::var("LUMINA_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

/// One seeded mutation of `valid`: most often bytes of the first 4 KiB overwritten, else a
/// truncation or inserted bytes.
fn mutate(valid: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    if bytes.is_empty() {
        return (0..rng.gen_range(1..64)).map(|_| rng.gen()).collect();
    }
    match rng.gen_range(0..10) {
        0..=5 => {
            let head = bytes.len().min(4096);
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..head);
                bytes[i] = match rng.gen_range(0..3) {
                    0 => rng.gen(),
                    1 => 0xff,
                    _ => bytes[i].wrapping_add(1),
                };
            }
        }
        6 | 7 => bytes.truncate(rng.gen_range(0..bytes.len())),
        _ => {
            let at = rng.gen_range(0..bytes.len());
            let extra: Vec<u8> = (0..rng.gen_range(1..64)).map(|_| rng.gen()).collect();
            bytes.splice(at..at, extra);
        }
    }
    bytes
}

/// Runs `target` on `data`; a panic is an error naming the input, kept for replay.
fn run_once(target: &Target, data: &[u8], what: &str) -> Result<()> {
    if catch_unwind(AssertUnwindSafe(|| target.run(data))).is_ok() {
        return Ok(());
    }
    let kept: PathBuf = std::env::temp_dir().join(format!(
        "lumina-fuzz-{}-{}",
        target.name,
        what.replace(['/', ' '], "_")
    ));
    std::fs::write(&kept, data)?;
    bail!(
        "fuzz target `{}` panicked on {what}; the input is kept at {} (add it to fuzz/regressions/{}/ with the fix)",
        target.name,
        kept.display(),
        target.name
    )
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn every_target_answers_its_corpus_and_mutations_without_a_panic() -> Result<()> {
    let mut failures = Vec::new();
    for target in TARGETS {
        let corpus = target
            .corpus()
            .with_context(|| format!("corpus of fuzz target `{}`", target.name))?;
        if corpus.is_empty() {
            bail!("fuzz target `{}` has an empty corpus", target.name);
        }
        let regressions = target.regressions()?;
        let seeds: Vec<(PathBuf, Vec<u8>)> = corpus
            .into_iter()
            .chain(regressions)
            .map(|p| std::fs::read(&p).map(|bytes| (p, bytes)))
            .collect::<std::io::Result<_>>()?;
        for (path, bytes) in &seeds {
            if let Err(e) = run_once(target, bytes, &name(path)) {
                failures.push(e.to_string());
            }
        }
        for seed in 0..iterations() as u64 {
            let (path, valid) = &seeds[seed as usize % seeds.len()];
            let mut rng = StdRng::seed_from_u64(seed);
            let what = format!("mutation seed {seed} of {}", name(path));
            if let Err(e) = run_once(target, &mutate(valid, &mut rng), &what) {
                failures.push(e.to_string());
                break;
            }
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// The seeds themselves must get through every stage of their target (a file named
/// `reject_*` must be refused): a corpus file that stopped loading after a format change would
/// leave the mutations testing only the first check.
#[test]
fn the_corpus_files_get_through_their_targets() -> Result<()> {
    let mut wrong = Vec::new();
    for target in TARGETS {
        for path in target.corpus()? {
            let answer = target.run(&std::fs::read(&path)?);
            let reject = name(&path).starts_with("reject_");
            match (answer, reject) {
                (Ok(()), false) | (Err(_), true) => {}
                (Ok(()), true) => wrong.push(format!("{}: accepted", path.display())),
                (Err(e), false) => wrong.push(format!("{}: {e}", path.display())),
            }
        }
    }
    if !wrong.is_empty() {
        bail!("corpus files answered wrongly:\n{}", wrong.join("\n"));
    }
    Ok(())
}
