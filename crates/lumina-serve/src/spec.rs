//! A generation as the server runs it: the settings both APIs share, checked against the
//! model before the job is queued (size grid and memory, vocabulary and token limit, ranges),
//! and turned into the same `Request` that `lumina generate` builds for the same flags — so the
//! same seed gives the same image.

use lumina::sample::Solver;
use lumina_pipelines::{Latents, Pipeline, Request};

use crate::api::ApiError;

/// Validated settings of one call.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub prompt: String,
    pub negative_prompt: String,
    /// Images, seeds `seed`, `seed + 1`, …
    pub n: usize,
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    /// `None`: the model's default for this canvas.
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub solver: Option<Solver>,
}

/// Bounds on what one call may ask (`lumina serve` flags).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_images: usize,
    pub max_side: usize,
    pub max_steps: usize,
    pub max_prompt_chars: usize,
    /// Tokens the text encoder reads; longer prompts are refused, not cut.
    pub max_sequence_length: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_images: 4,
            max_side: 2048,
            max_steps: 200,
            max_prompt_chars: 2000,
            max_sequence_length: 256,
        }
    }
}

/// The guidance scales accepted (0 and 1 turn guidance off).
pub const GUIDANCE_RANGE: std::ops::RangeInclusive<f64> = 0.0..=50.0;

/// The settings as a client sent them, before checking; field names are each API's own, for
/// the errors.
pub struct Draft<'a> {
    pub prompt: (&'a str, Option<String>),
    pub negative_prompt: (&'a str, Option<String>),
    pub n: (&'a str, Option<i64>),
    pub size: Size<'a>,
    pub seed: (&'a str, Option<i64>),
    pub steps: (&'a str, Option<i64>),
    pub guidance: (&'a str, Option<f64>),
    pub solver: (&'a str, Option<String>),
}

/// How a client gave the canvas.
pub enum Size<'a> {
    /// OpenAI's `"WxH"` in one field.
    Text(&'a str, Option<String>),
    /// A1111's `width` and `height`.
    Sides(Option<i64>, Option<i64>),
}

impl Draft<'_> {
    /// Checks every field against `limits` and the model; the first problem is the error.
    pub fn check(self, pipeline: &Pipeline, limits: &Limits) -> Result<Spec, ApiError> {
        let prompt = check_prompt(self.prompt, true, pipeline, limits)?;
        let negative_prompt = check_prompt(self.negative_prompt, false, pipeline, limits)?;
        let n = in_range(self.n, 1, limits.max_images as i64)?.unwrap_or(1) as usize;
        let native = pipeline.native_size();
        let ((wf, width), (hf, height)) = match self.size {
            Size::Text(field, text) => {
                let (w, h) = match text {
                    Some(t) => parse_size(field, &t)?,
                    None => (native, native),
                };
                ((field, w), (field, h))
            }
            Size::Sides(w, h) => {
                let side = |f: &'static str, v: Option<i64>| -> Result<usize, ApiError> {
                    Ok(in_range((f, v), 1, limits.max_side as i64)?.map_or(native, |v| v as usize))
                };
                (("width", side("width", w)?), ("height", side("height", h)?))
            }
        };
        let m = pipeline.size_multiple();
        for (field, v) in [(wf, width), (hf, height)] {
            if v == 0 || v > limits.max_side || v % m != 0 {
                let lo = (v / m).max(1) * m;
                return Err(ApiError::bad(
                    field,
                    format!(
                        "{width}x{height}: each side must be a multiple of {m} in {m}..={} (nearest: {lo} or {})",
                        limits.max_side / m * m,
                        lo + m
                    ),
                ));
            }
        }
        // A1111's seed -1 (and a missing seed) asks for a random one
        let seed = match self.seed.1 {
            None | Some(-1) => rand::random::<u32>() as u64,
            Some(s) if s >= 0 => s as u64,
            Some(s) => {
                return Err(ApiError::bad(
                    self.seed.0,
                    format!("{s}: a seed is a non-negative integer, or -1 for a random one"),
                ))
            }
        };
        let steps = in_range(self.steps, 1, limits.max_steps as i64)?.map(|s| s as usize);
        let guidance = match self.guidance.1 {
            Some(g) if !(g.is_finite() && GUIDANCE_RANGE.contains(&g)) => {
                return Err(ApiError::bad(
                    self.guidance.0,
                    format!(
                        "{g}: guidance must be in {}..={}",
                        GUIDANCE_RANGE.start(),
                        GUIDANCE_RANGE.end()
                    ),
                ))
            }
            g => g,
        };
        let solver = self
            .solver
            .1
            .map(|name| parse_solver(self.solver.0, &name))
            .transpose()?;
        let spec = Spec {
            prompt,
            negative_prompt,
            n,
            width,
            height,
            seed,
            steps,
            guidance,
            solver,
        };
        // what the pipeline itself would refuse, memory included, before queueing
        let request = spec.request(pipeline);
        pipeline
            .validate(&request)
            .map_err(|e| ApiError::bad(wf, e.message()))?;
        Ok(spec)
    }
}

impl Spec {
    /// The pipeline request `lumina generate -p PROMPT -n NEG -W -H -s SEED --num-images N
    /// [--steps --guidance --solver]` runs.
    pub fn request(&self, pipeline: &Pipeline) -> Request {
        let mut r = pipeline.default_request_at(vec![self.prompt.clone()], self.width, self.height);
        r.negative_prompts = Some(vec![self.negative_prompt.clone()]);
        r.steps = self.steps.unwrap_or(r.steps);
        r.guidance_scale = self.guidance.unwrap_or(r.guidance_scale);
        if let Some(solver) = self.solver {
            r.solver = solver;
        }
        r.images_per_prompt = self.n;
        r.latents = Latents::Seed(self.seed);
        r
    }
}

fn check_prompt(
    (field, text): (&str, Option<String>),
    required: bool,
    pipeline: &Pipeline,
    limits: &Limits,
) -> Result<String, ApiError> {
    let text = match text {
        Some(t) => t,
        None if required => return Err(ApiError::bad(field, format!("`{field}` is required"))),
        None => String::new(),
    };
    if required && text.trim().is_empty() {
        return Err(ApiError::bad(field, format!("`{field}` is empty")));
    }
    let chars = text.chars().count();
    if chars > limits.max_prompt_chars {
        return Err(ApiError::bad(
            field,
            format!(
                "{chars} characters; at most {} are accepted",
                limits.max_prompt_chars
            ),
        ));
    }
    let dropped = pipeline
        .prompt_overflow(&text, limits.max_sequence_length)
        .map_err(|e| ApiError::bad(field, e.message()))?;
    if !dropped.is_empty() {
        return Err(ApiError::bad(
            field,
            format!(
                "longer than the {} tokens the model reads; it would drop {dropped:?}",
                limits.max_sequence_length
            ),
        ));
    }
    Ok(text)
}

fn in_range((field, v): (&str, Option<i64>), lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
    match v {
        Some(v) if !(lo..=hi).contains(&v) => Err(ApiError::bad(
            field,
            format!("{v}: `{field}` must be in {lo}..={hi}"),
        )),
        v => Ok(v),
    }
}

/// `"WxH"` (OpenAI's `size`).
fn parse_size(field: &str, text: &str) -> Result<(usize, usize), ApiError> {
    let bad = || {
        ApiError::bad(
            field,
            format!("{text:?}: expected \"WIDTHxHEIGHT\" in pixels, such as \"64x32\""),
        )
    };
    let (w, h) = text.split_once(['x', 'X']).ok_or_else(bad)?;
    let side = |s: &str| s.trim().parse::<usize>().map_err(|_| bad());
    Ok((side(w)?, side(h)?))
}

/// Our solver names, and A1111's names of the samplers they are.
fn parse_solver(field: &str, name: &str) -> Result<Solver, ApiError> {
    let a1111 = match name {
        "Euler" | "Euler a" => Some(Solver::Euler),
        "Heun" => Some(Solver::Heun),
        "DPM++ 2M" => Some(Solver::Ab2),
        _ => None,
    };
    if let Some(solver) = a1111 {
        return Ok(solver);
    }
    name.to_lowercase().parse::<Solver>().map_err(|_| {
        let ours: Vec<String> = Solver::ALL.iter().map(|s| s.to_string()).collect();
        ApiError::bad(
            field,
            format!(
                "{name:?} is not a sampler of this server; use one of {}, or A1111's Euler, Euler a, Heun, DPM++ 2M",
                ours.join(", ")
            ),
        )
    })
}
