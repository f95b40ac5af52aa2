//! Step caching (TeaCache): skip the transformer blocks at evaluations whose input barely moved
//! since the last computed one, reusing that evaluation's block residual.
//!
//! Upstream: ali-vilab/TeaCache `TeaCache4Lumina-T2X/teacache_lumina_next.py` and
//! `TeaCache4Lumina2/teacache_lumina2.py`. At each evaluation the first block's modulated input
//! m (`layers[0].norm1(x, temb)`) is compared with the previous one,
//! r = mean|m − m_prev| / mean|m_prev|; a polynomial rescales r to an estimate of how much the
//! blocks' output moved and the estimates accumulate. While the sum stays below the threshold
//! the blocks are skipped and `x + (out_prev − in_prev)` stands in for them; otherwise they
//! run, the sum resets and the residual is stored. The first and last solver steps always run.
//! Each *group* of batch rows (the conditional and the unconditional half of a guided batch)
//! keeps its own state, as Lumina2's cache keyed by sequence length does.
//!
//! The cache is state of one solve, owned by the denoiser of that solve: the model itself is
//! only read. A cache whose threshold is 0 computes every evaluation and is bit-identical to
//! no cache.

use std::ops::Range;
use std::sync::Mutex;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// TeaCache's rescaling polynomial for Lumina-Next (highest power first;
/// `teacache_lumina_next.py`).
pub const LUMINA_NEXT_COEFFICIENTS: [f64; 5] = [
    393.76566581,
    -603.50993606,
    209.10239044,
    -23.00726601,
    0.86377344,
];

/// TeaCache's "v2" polynomial for Lumina-Image-2.0 (the comment in `teacache_lumina2.py`; its
/// code runs the Lumina-Next polynomial, "v1").
pub const LUMINA2_COEFFICIENTS: [f64; 5] = [
    225.7042019806413,
    -608.8453716535591,
    304.1869942338369,
    124.21267720116742,
    -1.4089066892956552,
];

/// When to skip: the accumulated, rescaled input change must reach `threshold` before the
/// blocks run again.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheRule {
    /// 0 computes every evaluation; TeaCache's 0.2 / 0.3 / 0.4 / 0.5 trade quality for ~1.5–2.8×.
    pub threshold: f64,
    /// The rescaling polynomial, highest power first.
    pub coefficients: Vec<f64>,
}

impl CacheRule {
    pub fn new(threshold: f64, coefficients: Vec<f64>) -> Result<Self> {
        Self::check_threshold(threshold)?;
        Self::check_coefficients(&coefficients)?;
        Ok(Self {
            threshold,
            coefficients,
        })
    }

    /// Whether a threshold is allowed: finite and ≥ 0 (0: every step computed). The one rule
    /// for a model's default ([`Self::check_threshold`]) and a request's own value.
    pub fn threshold_in_range(threshold: f64) -> bool {
        threshold.is_finite() && threshold >= 0.0
    }

    /// A threshold is finite and ≥ 0 (0: every step computed).
    pub fn check_threshold(threshold: f64) -> Result<()> {
        if !Self::threshold_in_range(threshold) {
            return Err(Error::input(
                "step cache threshold",
                "finite and >= 0",
                threshold.to_string(),
            ));
        }
        Ok(())
    }

    /// A rescaling polynomial has one or more finite coefficients.
    pub fn check_coefficients(coefficients: &[f64]) -> Result<()> {
        if coefficients.is_empty() || coefficients.iter().any(|c| !c.is_finite()) {
            return Err(Error::input(
                "step cache coefficients",
                "one or more finite numbers",
                format!("{coefficients:?}"),
            ));
        }
        Ok(())
    }

    /// The polynomial at r (Horner).
    pub fn rescale(&self, r: f64) -> f64 {
        self.coefficients.iter().fold(0.0, |acc, c| acc * r + c)
    }
}

/// What one group of batch rows remembers.
#[derive(Default)]
struct GroupState {
    previous_input: Option<Tensor>,
    residual: Option<Tensor>,
    accumulated: f64,
    /// The blocks' output at the last computed evaluation (recording only).
    previous_output: Option<Tensor>,
}

/// How a solve went: evaluations of the block stack computed and skipped, per group row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub computed: usize,
    pub skipped: usize,
}

/// One solve's cache (see the module docs).
pub struct StepCache {
    rule: CacheRule,
    groups: Mutex<Vec<GroupState>>,
    stats: Mutex<CacheStats>,
    /// With recording on: (input change r, output change) at every evaluation after the
    /// first of each group, the pairs a rescaling polynomial is fitted to.
    record: Option<Mutex<Vec<(f64, f64)>>>,
}

impl std::fmt::Debug for StepCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepCache")
            .field("rule", &self.rule)
            .field("stats", &self.stats())
            .field("recording", &self.record.is_some())
            .finish()
    }
}

/// The cache arguments of one forward: which rows form which group, and whether this
/// evaluation must compute (first and last steps).
#[derive(Clone, Copy, Debug)]
pub struct CacheCall<'a> {
    pub cache: &'a StepCache,
    /// (group id, batch rows) — ids index the cache's per-group state.
    pub groups: &'a [(usize, Range<usize>)],
    pub force: bool,
}

/// The rows `rows` of `t` along the batch axis (all of it for `None`).
pub fn select_rows(t: &Tensor, rows: Option<&[u32]>) -> Result<Tensor> {
    match rows {
        None => Ok(t.clone()),
        Some(rows) => {
            let index = Tensor::new(rows, t.device())?;
            Ok(t.index_select(&index, 0)?)
        }
    }
}

/// mean|a − b| / mean|b|, in f32.
fn relative_l1(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
    let num = (&a - &b)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
    let den = b.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
    Ok(if den > 0.0 {
        num / den
    } else if num > 0.0 {
        f64::INFINITY
    } else {
        0.0
    })
}

impl StepCache {
    pub fn new(rule: CacheRule) -> Self {
        Self {
            rule,
            groups: Mutex::new(Vec::new()),
            stats: Mutex::new(CacheStats::default()),
            record: None,
        }
    }

    /// A cache that computes every evaluation (threshold 0) and records the (input change,
    /// output change) pairs for fitting a rescaling polynomial.
    pub fn recording() -> Self {
        Self {
            record: Some(Mutex::new(Vec::new())),
            ..Self::new(CacheRule {
                threshold: 0.0,
                coefficients: vec![1.0, 0.0],
            })
        }
    }

    pub fn rule(&self) -> &CacheRule {
        &self.rule
    }

    pub fn stats(&self) -> CacheStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// The recorded (input change, output change) pairs (empty unless [`StepCache::recording`]).
    pub fn recorded(&self) -> Vec<(f64, f64)> {
        self.record
            .as_ref()
            .and_then(|r| r.lock().ok().map(|r| r.clone()))
            .unwrap_or_default()
    }

    /// `blocks(x, rows)` for the rows that must compute, `x + residual` for the others.
    /// `x` is the block stack's input (B, N, D) and `modulated` the first block's modulated
    /// input (B, N, D). `blocks` gets the computing rows stacked and, when they are not the
    /// whole batch, their batch indices, to select its per-row context (conditioning,
    /// masks, RoPE) alike.
    pub fn run(
        call: &CacheCall,
        x: &Tensor,
        modulated: &Tensor,
        blocks: impl FnOnce(&Tensor, Option<&[u32]>) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let cache = call.cache;
        let poisoned = || Error::input("step cache", "usable", "poisoned by an earlier panic");
        let mut groups = cache.groups.lock().map_err(|_| poisoned())?;
        let mut compute = Vec::with_capacity(call.groups.len());
        for (id, rows) in call.groups {
            if groups.len() <= *id {
                groups.resize_with(id + 1, GroupState::default);
            }
            let g = &mut groups[*id];
            let m = modulated.narrow(0, rows.start, rows.len())?;
            let change = match &g.previous_input {
                Some(prev) if prev.dims() == m.dims() => Some(relative_l1(&m, prev)?),
                _ => None,
            };
            let run = match change {
                _ if call.force || cache.rule.threshold <= 0.0 || g.residual.is_none() => true,
                None => true,
                Some(r) => {
                    g.accumulated += cache.rule.rescale(r);
                    g.accumulated >= cache.rule.threshold
                }
            };
            if run {
                g.accumulated = 0.0;
            }
            g.previous_input = Some(m);
            compute.push((run, change));
        }
        let all = compute.iter().all(|(run, _)| *run);
        let computing: Vec<&(usize, Range<usize>)> = call
            .groups
            .iter()
            .zip(&compute)
            .filter(|(_, (run, _))| *run)
            .map(|(g, _)| g)
            .collect();
        // the computed rows, through the blocks in one batch (all of x when every group runs,
        // so a cache that skips nothing is bit-identical to none)
        let computed = if all {
            Some(blocks(x, None)?)
        } else if computing.is_empty() {
            None
        } else {
            let parts = computing
                .iter()
                .map(|(_, r)| x.narrow(0, r.start, r.len()))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let rows: Vec<u32> = computing
                .iter()
                .flat_map(|(_, r)| r.clone().map(|i| i as u32))
                .collect();
            Some(blocks(&Tensor::cat(&parts, 0)?, Some(&rows))?)
        };
        let mut out_rows: Vec<(usize, Tensor)> = Vec::with_capacity(call.groups.len());
        let mut offset = 0;
        for ((id, rows), (run, change)) in call.groups.iter().zip(&compute) {
            let g = &mut groups[*id];
            let xin = x.narrow(0, rows.start, rows.len())?;
            let out = if *run {
                let computed = computed.as_ref().ok_or_else(poisoned)?;
                let start = if all { rows.start } else { offset };
                offset += rows.len();
                let out = computed.narrow(0, start, rows.len())?;
                if let (Some(record), Some(r)) = (&cache.record, change) {
                    if let Some(prev) = &g.previous_output {
                        if prev.dims() == out.dims() {
                            let moved = relative_l1(&out, prev)?;
                            record.lock().map_err(|_| poisoned())?.push((*r, moved));
                        }
                    }
                }
                if cache.record.is_some() {
                    g.previous_output = Some(out.clone());
                }
                g.residual = Some((&out - &xin)?);
                out
            } else {
                let residual = g.residual.as_ref().ok_or_else(poisoned)?;
                (&xin + residual)?
            };
            out_rows.push((rows.start, out));
        }
        if let Ok(mut s) = cache.stats.lock() {
            for (run, _) in &compute {
                if *run {
                    s.computed += 1;
                } else {
                    s.skipped += 1;
                }
            }
        }
        if all {
            return computed.ok_or_else(poisoned);
        }
        out_rows.sort_by_key(|(start, _)| *start);
        let parts: Vec<Tensor> = out_rows.into_iter().map(|(_, t)| t).collect();
        Ok(Tensor::cat(&parts, 0)?)
    }
}

/// Least-squares fit of a polynomial of `degree` to (x, y) pairs, highest power first: what
/// TeaCache's `np.polyfit` does on recorded (input change, output change) pairs.
pub fn fit_polynomial(pairs: &[(f64, f64)], degree: usize) -> Result<Vec<f64>> {
    let n = degree + 1;
    if pairs.len() < n {
        return Err(Error::input(
            "polynomial fit",
            format!("at least {n} recorded pairs for degree {degree}"),
            pairs.len().to_string(),
        ));
    }
    // normal equations AᵀA c = Aᵀy with A[i][j] = x_i^(degree − j), solved by Gaussian
    // elimination with partial pivoting (n ≤ 6 in practice)
    let mut m = vec![vec![0.0f64; n + 1]; n];
    for &(x, y) in pairs {
        let powers: Vec<f64> = (0..n).map(|j| x.powi((degree - j) as i32)).collect();
        for i in 0..n {
            for j in 0..n {
                m[i][j] += powers[i] * powers[j];
            }
            m[i][n] += powers[i] * y;
        }
    }
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))
            .unwrap_or(col);
        m.swap(col, pivot);
        let p = m[col][col];
        if p.abs() < 1e-300 {
            return Err(Error::input(
                "polynomial fit",
                "input changes that vary (a solvable system)",
                "a singular system",
            ));
        }
        let pivot_row = m[col].clone();
        for (row, r) in m.iter_mut().enumerate() {
            if row != col {
                let f = r[col] / p;
                for (x, y) in r[col..].iter_mut().zip(&pivot_row[col..]) {
                    *x -= f * y;
                }
            }
        }
    }
    Ok((0..n).map(|i| m[i][n] / m[i][i]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_fit_recovers_a_known_polynomial() -> Result<()> {
        let want = [2.0, -3.0, 0.5];
        let pairs: Vec<(f64, f64)> = (0..20)
            .map(|i| {
                let x = i as f64 / 19.0;
                (x, want[0] * x * x + want[1] * x + want[2])
            })
            .collect();
        let got = fit_polynomial(&pairs, 2)?;
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9, "{got:?}");
        }
        let rule = CacheRule::new(0.1, got)?;
        assert!((rule.rescale(0.5) - (0.5 - 1.5 + 0.5)).abs() < 1e-9);
        assert!(fit_polynomial(&pairs[..2], 2).is_err());
        assert!(CacheRule::new(-1.0, vec![1.0]).is_err());
        Ok(())
    }
}
