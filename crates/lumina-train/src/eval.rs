//! Judging a model on the `shapes` task: generate images for a prompt list (several seeds
//! each), run the spec's judge, report accuracy overall and per prompt kind.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{IndexOp, Tensor};
use lumina_pipelines::output::{encode_apng, save_png, FRAME_MS};
use lumina_pipelines::{Latents, Pipeline, Request};
use lumina_shapes::clip::{judge_clip, ClipCaption, ClipFault};
use lumina_shapes::prompts::{ClipKind, PromptKind};
use lumina_shapes::{judge, Caption, Fault};

use crate::data::to_image;
use crate::error::Result;

/// A prompt kind or a fault, as reports name it.
pub trait Label: Copy + Ord {
    fn label(self) -> &'static str;
}

macro_rules! label_by_name {
    ($($t:ty),*) => {$(
        impl Label for $t {
            fn label(self) -> &'static str {
                self.name()
            }
        }
    )*};
}

label_by_name!(PromptKind, ClipKind, Fault, ClipFault);

/// Accuracy over a prompt list: of images by [`PromptKind`] and [`Fault`], or of clips by
/// [`ClipKind`] and [`ClipFault`].
#[derive(Clone, Debug, PartialEq)]
pub struct Report<K = PromptKind, F = Fault> {
    pub correct: usize,
    pub total: usize,
    /// (correct, total) per kind.
    pub per_kind: BTreeMap<K, (usize, usize)>,
    /// Each wrong image or clip.
    pub failures: Vec<Failure<F>>,
}

impl<K, F> Default for Report<K, F> {
    fn default() -> Self {
        Self {
            correct: 0,
            total: 0,
            per_kind: BTreeMap::new(),
            failures: Vec::new(),
        }
    }
}

/// A wrong image or clip: its caption and seed, and the judge's fault and reading.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure<F = Fault> {
    pub caption: String,
    pub seed: u64,
    pub fault: F,
    pub reason: String,
}

impl<K: Label, F: Label> Report<K, F> {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }

    pub fn kind_accuracy(&self, kind: K) -> Option<f64> {
        self.per_kind
            .get(&kind)
            .map(|&(c, t)| c as f64 / t.max(1) as f64)
    }

    /// Wrong images by the kind of mistake.
    pub fn faults(&self) -> BTreeMap<F, usize> {
        let mut faults = BTreeMap::new();
        for f in &self.failures {
            *faults.entry(f.fault).or_default() += 1;
        }
        faults
    }

    /// Records one judged sample of `kind`: correct without a fault, else a failure.
    fn record(&mut self, kind: K, caption: String, seed: u64, fault: Option<F>, reason: String) {
        let entry = self.per_kind.entry(kind).or_default();
        entry.1 += 1;
        self.total += 1;
        match fault {
            None => {
                entry.0 += 1;
                self.correct += 1;
            }
            Some(fault) => self.failures.push(Failure {
                caption,
                seed,
                fault,
                reason,
            }),
        }
    }

    /// "0.912 (single 0.95, position 0.90, relation 0.88, held-out pair 0.92)".
    pub fn summary(&self) -> String {
        let kinds: Vec<String> = self
            .per_kind
            .iter()
            .map(|(k, &(c, t))| format!("{} {:.3}", k.label(), c as f64 / t.max(1) as f64))
            .collect();
        format!("{:.3} ({})", self.accuracy(), kinds.join(", "))
    }
}

/// Prompts generated per call: bounds memory and keeps progress visible.
const PROMPTS_PER_CALL: usize = 8;

/// Generates `seeds` samples per prompt with `template`'s settings (its prompts and latents
/// are replaced), `PROMPTS_PER_CALL` prompts a call, and hands each to `each` in order with
/// its prompt and seed: sample k of prompt j starts from seed `base_seed + j·seeds + k`,
/// whatever the batching. A sample is an image (H, W, 3) or a clip's frames (F, H, W, 3).
fn for_each_sample<C>(
    pipeline: &Pipeline,
    prompts: &[C],
    text: impl Fn(&C) -> String,
    (seeds, base_seed): (usize, u64),
    template: &Request,
    mut progress: impl FnMut(usize, usize),
    mut each: impl FnMut(&C, u64, Tensor) -> Result<()>,
) -> Result<()> {
    for (chunk_index, chunk) in prompts.chunks(PROMPTS_PER_CALL).enumerate() {
        let first = chunk_index * PROMPTS_PER_CALL;
        let mut r = template.clone();
        r.prompts = chunk.iter().map(&text).collect();
        r.negative_prompts = None;
        r.images_per_prompt = seeds;
        r.latents = Latents::Seed(base_seed + (first * seeds) as u64);
        let out = pipeline.generate(&r, |_| {})?;
        for (j, caption) in chunk.iter().enumerate() {
            for k in 0..seeds {
                let seed = base_seed + ((first + j) * seeds + k) as u64;
                each(caption, seed, out.images.i(j * seeds + k)?)?;
            }
        }
        progress((first + chunk.len()).min(prompts.len()), prompts.len());
    }
    Ok(())
}

/// Generates `seeds` images per prompt with `template`'s settings and judges them (seeds as
/// [`for_each_sample`] gives them). With `grid`, writes all images as one PNG: each prompt's
/// seeds side by side, prompts in reading order on a roughly square sheet.
pub fn evaluate(
    pipeline: &Pipeline,
    prompts: &[Caption],
    seeds: usize,
    base_seed: u64,
    template: &Request,
    grid: Option<&Path>,
    progress: impl FnMut(usize, usize),
) -> Result<Report> {
    let mut report = Report::default();
    let mut images: Vec<Tensor> = Vec::new();
    let judged = |caption: &Caption, seed: u64, image: Tensor| -> Result<()> {
        let verdict = judge(&to_image(&image)?, caption);
        report.record(
            PromptKind::of(caption),
            caption.text(),
            seed,
            verdict.fault,
            verdict.reason,
        );
        if grid.is_some() {
            images.push(image);
        }
        Ok(())
    };
    for_each_sample(
        pipeline,
        prompts,
        Caption::text,
        (seeds, base_seed),
        template,
        progress,
        judged,
    )?;
    if let (Some(path), false) = (grid, images.is_empty()) {
        // each prompt's (seeds, H, W, 3) → one strip (H, seeds·W, 3)
        let strips = images
            .chunks(seeds.max(1))
            .map(|strip| Tensor::cat(strip, 1))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let per_row = ((strips.len() as f64 / seeds.max(1) as f64).sqrt().ceil() as usize).max(1);
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
    Ok(report)
}

/// [`evaluate`] for a clip model: `seeds` clips per prompt of the template's length (its
/// `frames`), judged by the clip judge. With `grid`, writes one animated PNG whose frame k
/// tiles frame k of every clip (each prompt's seeds side by side).
pub fn evaluate_clips(
    pipeline: &Pipeline,
    prompts: &[ClipCaption],
    seeds: usize,
    base_seed: u64,
    template: &Request,
    grid: Option<&Path>,
    progress: impl FnMut(usize, usize),
) -> Result<Report<ClipKind, ClipFault>> {
    let mut report = Report::default();
    // per clip, its frames (F, H, W, 3)
    let mut clips: Vec<Tensor> = Vec::new();
    let judged = |caption: &ClipCaption, seed: u64, clip: Tensor| -> Result<()> {
        if clip.rank() != 4 {
            return Err(crate::error::Error::Eval(format!(
                "clip prompts need a clip model; this one made images of shape {:?}",
                clip.dims()
            )));
        }
        let frames = (0..clip.dim(0)?)
            .map(|f| to_image(&clip.i(f)?))
            .collect::<Result<Vec<_>>>()?;
        let verdict = judge_clip(&frames, caption);
        report.record(
            ClipKind::of(caption),
            caption.text(),
            seed,
            verdict.fault,
            verdict.reason,
        );
        if grid.is_some() {
            clips.push(clip);
        }
        Ok(())
    };
    for_each_sample(
        pipeline,
        prompts,
        ClipCaption::text,
        (seeds, base_seed),
        template,
        progress,
        judged,
    )?;
    if let (Some(path), Some(first)) = (grid, clips.first()) {
        let per_row = ((clips.len() as f64).sqrt().ceil() as usize / seeds.max(1)).max(1) * seeds;
        let sheets = (0..first.dim(0)?)
            .map(|f| {
                let frame: Vec<Tensor> = clips
                    .iter()
                    .map(|c| c.i(f))
                    .collect::<candle_core::Result<_>>()?;
                tile(&frame, per_row)
            })
            .collect::<Result<Vec<_>>>()?;
        let text: Vec<String> = prompts.iter().map(ClipCaption::text).collect();
        let bytes = encode_apng(
            &Tensor::stack(&sheets, 0)?,
            FRAME_MS,
            &format!(
                "shapes-video evaluation sheet, {per_row} clips per row, {seeds} seeds per prompt, prompts in reading order:\n{}",
                text.join("\n")
            ),
        )?;
        std::fs::write(path, bytes).map_err(|e| crate::error::Error::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
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
