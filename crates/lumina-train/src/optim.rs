//! AdamW with decoupled weight decay, a warm-up + decay learning rate, global-norm gradient
//! clipping, and state that can be saved and restored exactly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::config::{LrDecay, OptimConfig};
use crate::error::Result;
use crate::inplace;

/// The learning rate at `step` (0-based): linear warm-up to the peak, then the decay.
pub fn learning_rate(cfg: &OptimConfig, step: usize) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    match cfg.decay {
        LrDecay::Constant => cfg.lr,
        LrDecay::Cosine { final_fraction } => {
            let span = cfg.steps.saturating_sub(cfg.warmup_steps).max(1) as f64;
            let progress = ((step - cfg.warmup_steps) as f64 / span).min(1.0);
            let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
            cfg.lr * (final_fraction + (1.0 - final_fraction) * cosine)
        }
    }
}

/// Scales `grads` of `vars` so that their global L2 norm is at most `max`; returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[(String, Var)], max: f64) -> Result<f64> {
    let mut total = 0.0f64;
    for (_, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = total.sqrt();
    if norm > max {
        let scale = max / (norm + 1e-6);
        for (_, var) in vars {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// Parameters that get weight decay: matrices, not norms, biases, gates or tokens.
fn decays(var: &Var) -> bool {
    var.as_tensor().rank() >= 2
}

pub struct AdamW {
    cfg: OptimConfig,
    /// First and second moments, by parameter name.
    m: HashMap<String, Tensor>,
    v: HashMap<String, Tensor>,
    /// Updates applied so far.
    pub t: usize,
}

impl AdamW {
    pub fn new(cfg: &OptimConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            m: HashMap::new(),
            v: HashMap::new(),
            t: 0,
        }
    }

    /// One update with learning rate `lr`; parameters without a gradient are left alone.
    /// Contiguous f32 CPU parameters are updated in place by one-pass kernels
    /// ([`crate::inplace`]), the rest by [`AdamW::step_composed`]'s tensor ops; both give the
    /// same bits.
    pub fn step(&mut self, grads: &GradStore, vars: &[(String, Var)], lr: f64) -> Result<()> {
        self.t += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let c = self.corrections();
        for (name, var) in vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let theta = var.as_tensor();
            if !inplace::applies(&[theta, g]) {
                self.update_composed(name, var, g, lr, c)?;
                continue;
            }
            if !self.m.contains_key(name) {
                self.m.insert(name.clone(), theta.zeros_like()?);
                self.v.insert(name.clone(), theta.zeros_like()?);
            }
            let (Some(m), Some(v)) = (self.m.get(name), self.v.get(name)) else {
                continue;
            };
            if !inplace::applies(&[m, v]) {
                self.update_composed(name, var, g, lr, c)?;
                continue;
            }
            inplace::moment(m, g, b1)?;
            inplace::moment_sq(v, g, b2)?;
            inplace::adamw_apply(theta, (m, v), lr, c, self.cfg.eps, self.keep(var, lr))?;
        }
        Ok(())
    }

    /// The reference update: the same arithmetic as tensor ops, each a fresh tensor.
    pub fn step_composed(
        &mut self,
        grads: &GradStore,
        vars: &[(String, Var)],
        lr: f64,
    ) -> Result<()> {
        self.t += 1;
        let c = self.corrections();
        for (name, var) in vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                self.update_composed(name, var, g, lr, c)?;
            }
        }
        Ok(())
    }

    /// Adam's bias corrections `1 − βᵗ` after `t` updates.
    fn corrections(&self) -> (f64, f64) {
        let t = self.t as i32;
        (1.0 - self.cfg.beta1.powi(t), 1.0 - self.cfg.beta2.powi(t))
    }

    /// The factor decoupled weight decay multiplies a parameter by, if it decays.
    fn keep(&self, var: &Var, lr: f64) -> Option<f64> {
        (decays(var) && self.cfg.weight_decay > 0.0).then_some(1.0 - lr * self.cfg.weight_decay)
    }

    fn update_composed(
        &mut self,
        name: &str,
        var: &Var,
        g: &Tensor,
        lr: f64,
        (c1, c2): (f64, f64),
    ) -> Result<()> {
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let m = match self.m.get(name) {
            Some(m) => ((m * b1)? + (g * (1.0 - b1))?)?,
            None => (g * (1.0 - b1))?,
        };
        let v = match self.v.get(name) {
            Some(v) => ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?,
            None => (g.sqr()? * (1.0 - b2))?,
        };
        let update = ((&m / c1)? / ((&v / c2)?.sqrt()? + self.cfg.eps)?)?;
        let theta = var.as_tensor();
        let theta = match self.keep(var, lr) {
            Some(keep) => (theta * keep)?,
            None => theta.clone(),
        };
        var.set(&(theta - (update * lr)?)?)?;
        self.m.insert(name.to_string(), m);
        self.v.insert(name.to_string(), v);
        Ok(())
    }

    /// Copies of the moments keyed `m.<name>` / `v.<name>` (copies: the live ones change in
    /// place at the next step).
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let m = self
            .m
            .iter()
            .map(|(k, t)| Ok((format!("m.{k}"), t.copy()?)));
        let v = self
            .v
            .iter()
            .map(|(k, t)| Ok((format!("v.{k}"), t.copy()?)));
        m.chain(v).collect()
    }

    /// Restores moments saved by [`AdamW::state`] after `t` updates.
    pub fn restore(&mut self, state: HashMap<String, Tensor>, t: usize) {
        self.t = t;
        for (key, tensor) in state {
            if let Some(name) = key.strip_prefix("m.") {
                self.m.insert(name.to_string(), tensor);
            } else if let Some(name) = key.strip_prefix("v.") {
                self.v.insert(name.to_string(), tensor);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn cfg() -> OptimConfig {
        OptimConfig {
            steps: 100,
            batch_size: 1,
            lr: 0.1,
            warmup_steps: 10,
            decay: LrDecay::Cosine {
                final_fraction: 0.1,
            },
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            grad_clip: 1.0,
            shards: 1,
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_the_final_fraction() {
        let c = cfg();
        assert!((learning_rate(&c, 0) - 0.01).abs() < 1e-12);
        assert!((learning_rate(&c, 9) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&c, 100) - 0.01).abs() < 1e-9);
        assert!(learning_rate(&c, 50) < 0.1 && learning_rate(&c, 50) > 0.01);
    }

    /// The in-place kernels and the composed tensor ops give the same bits, with and without
    /// weight decay, over several steps (so a run resumes exactly whichever path it takes).
    #[test]
    fn inplace_updates_equal_the_composed_reference_bit_for_bit() -> Result<()> {
        let dev = Device::Cpu;
        let c = OptimConfig {
            weight_decay: 0.05,
            ..cfg()
        };
        let w = Tensor::randn(0f32, 1.0, (37, 19), &dev)?;
        let bias = Tensor::randn(0f32, 1.0, 19, &dev)?;
        let fast = vec![
            ("w".to_string(), Var::from_tensor(&w)?),
            ("b".to_string(), Var::from_tensor(&bias)?),
        ];
        let slow: Vec<(String, Var)> = fast
            .iter()
            .map(|(k, v)| Ok((k.clone(), Var::from_tensor(&v.as_tensor().copy()?)?)))
            .collect::<Result<_>>()?;
        let (mut a, mut b) = (AdamW::new(&c), AdamW::new(&c));
        let x = Tensor::randn(0f32, 1.0, (5, 37), &dev)?;
        for step in 0..6 {
            let lr = learning_rate(&c, step);
            for (vars, opt, composed) in [(&fast, &mut a, false), (&slow, &mut b, true)] {
                let y = x
                    .matmul(vars[0].1.as_tensor())?
                    .broadcast_add(vars[1].1.as_tensor())?;
                let grads = y.tanh()?.sqr()?.sum_all()?.backward()?;
                if composed {
                    opt.step_composed(&grads, vars, lr)?;
                } else {
                    opt.step(&grads, vars, lr)?;
                }
            }
            for ((name, f), (_, s)) in fast.iter().zip(&slow) {
                let (f, s) = (
                    f.as_tensor().flatten_all()?.to_vec1::<f32>()?,
                    s.as_tensor().flatten_all()?.to_vec1::<f32>()?,
                );
                let same = f.iter().zip(&s).all(|(p, q)| p.to_bits() == q.to_bits());
                assert!(
                    same,
                    "step {step}: `{name}` differs between in-place and composed"
                );
            }
        }
        let (sa, sb) = (a.state()?, b.state()?);
        for (k, t) in &sa {
            let d = (t - &sb[k])?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(d, 0.0, "moment {k}");
        }
        Ok(())
    }

    /// AdamW minimises a quadratic; clipping bounds the gradient norm.
    #[test]
    fn adamw_minimises_a_quadratic_and_clipping_bounds_the_norm() -> Result<()> {
        let x = Var::new(&[3.0f32, -2.0], &Device::Cpu)?;
        let vars = vec![("x".to_string(), x.clone())];
        let mut opt = AdamW::new(&OptimConfig {
            decay: LrDecay::Constant,
            ..cfg()
        });
        for _ in 0..300 {
            let loss = x.as_tensor().sqr()?.sum_all()?;
            let mut grads = loss.backward()?;
            let norm = clip_grad_norm(&mut grads, &vars, 1.0)?;
            assert!(norm.is_finite());
            let clipped = grads
                .get(x.as_tensor())
                .expect("a gradient")
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()?
                .sqrt();
            assert!(clipped <= 1.0 + 1e-5);
            opt.step(&grads, &vars, 0.05)?;
        }
        let end = x.as_tensor().abs()?.max(0)?.to_scalar::<f32>()?;
        assert!(end < 0.05, "{end}");
        Ok(())
    }
}
