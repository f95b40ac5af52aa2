//! Judging a model on the `shapes` task: generate images for a prompt list (several seeds
//! each), run the spec's judge, report accuracy overall and per prompt kind.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{IndexOp, Tensor};
use lumina_pipelines::output::save_png;
use lumina_pipelines::{Latents, Pipeline, Request};
use lumina_shapes::prompts::PromptKind;
use lumina_shapes::{judge, Caption, Fault};

use crate::data::to_image;
use crate::error::Result;

/// Accuracy over a prompt list.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub correct: usize,
    pub total: usize,
    /// (correct, total) per kind.
    pub per_kind: BTreeMap<PromptKind, (usize, usize)>,
    /// Each wrong image.
    pub failures: Vec<Failure>,
}

/// A wrong image: its caption and seed, and the judge's fault and reading.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub caption: String,
    pub seed: u64,
    pub fault: Fault,
    pub reason: String,
}

impl Report {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }

    pub fn kind_accuracy(&self, kind: PromptKind) -> Option<f64> {
        self.per_kind
            .get(&kind)
            .map(|&(c, t)| c as f64 / t.max(1) as f64)
    }

    /// Wrong images by the kind of mistake.
    pub fn faults(&self) -> BTreeMap<Fault, usize> {
        let mut faults = BTreeMap::new();
        for f in &self.failures {
            *faults.entry(f.fault).or_default() += 1;
        }
        faults
    }

    /// "0.912 (single 0.95, position 0.90, relation 0.88, held-out pair 0.92)".
    pub fn summary(&self) -> String {
        let kinds: Vec<String> = self
            .per_kind
            .iter()
            .map(|(k, &(c, t))| format!("{} {:.3}", k.name(), c as f64 / t.max(1) as f64))
            .collect();
        format!("{:.3} ({})", self.accuracy(), kinds.join(", "))
    }
}

/// Prompts generated per call: bounds memory and keeps progress visible.
const PROMPTS_PER_CALL: usize = 8;

/// Generates `seeds` images per prompt with `template`'s settings (its prompts and latents
/// are replaced) and judges them. Image k of prompt j starts from seed `base_seed + j·seeds +
/// k`, whatever the batching. With `grid`, writes all images as one PNG: each prompt's seeds
/// side by side, prompts in reading order on a roughly square sheet.
pub fn evaluate(
    pipeline: &Pipeline,
    prompts: &[Caption],
    seeds: usize,
    base_seed: u64,
    template: &Request,
    grid: Option<&Path>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Report> {
    let mut report = Report::default();
    let mut strips: Vec<Tensor> = Vec::new();
    for (chunk_index, chunk) in prompts.chunks(PROMPTS_PER_CALL).enumerate() {
        let first = chunk_index * PROMPTS_PER_CALL;
        let mut r = template.clone();
        r.prompts = chunk.iter().map(Caption::text).collect();
        r.negative_prompts = None;
        r.images_per_prompt = seeds;
        r.latents = Latents::Seed(base_seed + (first * seeds) as u64);
        let out = pipeline.generate(&r, |_| {})?;
        for (j, caption) in chunk.iter().enumerate() {
            let kind = PromptKind::of(caption);
            let entry = report.per_kind.entry(kind).or_default();
            for k in 0..seeds {
                let i = j * seeds + k;
                let verdict = judge(&to_image(&out.images.i(i)?)?, caption);
                entry.1 += 1;
                report.total += 1;
                match verdict.fault {
                    None => {
                        entry.0 += 1;
                        report.correct += 1;
                    }
                    Some(fault) => report.failures.push(Failure {
                        caption: caption.text(),
                        seed: base_seed + ((first + j) * seeds + k) as u64,
                        fault,
                        reason: verdict.reason,
                    }),
                }
            }
            if grid.is_some() {
                // (seeds, H, W, 3) → one strip (H, seeds·W, 3)
                let strip: Vec<Tensor> = (0..seeds)
                    .map(|k| out.images.i(j * seeds + k))
                    .collect::<candle_core::Result<_>>()?;
                strips.push(Tensor::cat(&strip, 1)?);
            }
        }
        progress((first + chunk.len()).min(prompts.len()), prompts.len());
    }
    if let Some(path) = grid {
        if !strips.is_empty() {
            let per_row =
                ((strips.len() as f64 / seeds.max(1) as f64).sqrt().ceil() as usize).max(1);
            let text: Vec<String> = prompts.iter().map(Caption::text).collect();
            save_png(
                path,
                &tile(&strips, per_row)?,
                &format!(
                    "shapes evaluation grid, {per_row} prompts per row, {seeds} seeds each, prompts in reading order:\n{}",
                    text.join("\n")
                ),
            )?;
        }
    }
    Ok(report)
}

/// Lays equal-sized (H, W, 3) strips out `per_row` to a row, padding the last row with black.
fn tile(strips: &[Tensor], per_row: usize) -> Result<Tensor> {
    let blank = strips[0].zeros_like()?;
    let rows: Vec<Tensor> = strips
        .chunks(per_row)
        .map(|chunk| {
            let mut row = chunk.to_vec();
            row.resize(per_row, blank.clone());
            Tensor::cat(&row, 1) // (H, per_row·W, 3)
        })
        .collect::<candle_core::Result<_>>()?;
    Ok(Tensor::cat(&rows, 0)?) // (rows·H, per_row·W, 3)
}
