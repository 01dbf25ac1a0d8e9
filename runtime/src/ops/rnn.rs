//! Recurrent layers: `LSTM`, `GRU` and `RNN` (forward, reverse, bidirectional;
//! `sequence_lens`, initial states, peepholes, `clip`, `input_forget`,
//! `linear_before_reset`, `layout`, custom activations).
//!
//! Design: computed in f64. The input projection X·Wᵀ of all steps is one matmul;
//! the recurrent product h·Rᵀ is one small matmul per step and batch item, and the
//! gates run on the host. Batching the recurrent product over batch items is
//! left for later.

use candle_core::{DType, Device};

use crate::ops::common::from_f64;
use crate::ops::{Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::Tensor;
use crate::value::Value;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "LSTM" => |n, i| recurrent(n, i, Cell::Lstm),
        "GRU" => |n, i| recurrent(n, i, Cell::Gru),
        "RNN" => |n, i| recurrent(n, i, Cell::Rnn),
        _ => return None,
    };
    Some(k)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    Lstm,
    Gru,
    Rnn,
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Self::Lstm => 4,
            Self::Gru => 3,
            Self::Rnn => 1,
        }
    }

    fn default_activations(self) -> &'static [&'static str] {
        match self {
            Self::Lstm => &["Sigmoid", "Tanh", "Tanh"],
            Self::Gru => &["Sigmoid", "Tanh"],
            Self::Rnn => &["Tanh"],
        }
    }
}

/// An activation function with its parameters.
#[derive(Debug, Clone, Copy)]
struct Act {
    kind: ActKind,
    alpha: f64,
    beta: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActKind {
    Relu,
    Tanh,
    Sigmoid,
    Affine,
    LeakyRelu,
    ThresholdedRelu,
    ScaledTanh,
    HardSigmoid,
    Elu,
    Softsign,
    Softplus,
}

impl Act {
    fn apply(self, x: f64) -> f64 {
        let (a, b) = (self.alpha, self.beta);
        match self.kind {
            ActKind::Relu => x.max(0.0),
            ActKind::Tanh => x.tanh(),
            ActKind::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            ActKind::Affine => a * x + b,
            ActKind::LeakyRelu => {
                if x < 0.0 {
                    a * x
                } else {
                    x
                }
            }
            ActKind::ThresholdedRelu => {
                if x > a {
                    x
                } else {
                    0.0
                }
            }
            ActKind::ScaledTanh => a * (b * x).tanh(),
            ActKind::HardSigmoid => (a * x + b).clamp(0.0, 1.0),
            ActKind::Elu => {
                if x < 0.0 {
                    a * (x.exp() - 1.0)
                } else {
                    x
                }
            }
            ActKind::Softsign => x / (1.0 + x.abs()),
            ActKind::Softplus => x.exp().ln_1p(),
        }
    }
}

fn parse_acts(n: &NodeInfo, cell: Cell, dirs: usize) -> Result<Vec<Act>, OpError> {
    let names: Vec<String> = match n.attrs.strings("activations")? {
        Some(v) if !v.is_empty() => v.to_vec(),
        _ => {
            let d = cell.default_activations();
            (0..dirs)
                .flat_map(|_| d.iter().map(|s| (*s).to_owned()))
                .collect()
        }
    };
    let alphas = n.attrs.floats("activation_alpha")?.unwrap_or(&[]).to_vec();
    let betas = n.attrs.floats("activation_beta")?.unwrap_or(&[]).to_vec();
    let (mut ai, mut bi) = (0, 0);
    let take = |list: &[f32], idx: &mut usize, default: f64| {
        let v = list.get(*idx).map_or(default, |&v| f64::from(v));
        *idx += 1;
        v
    };
    names
        .iter()
        .map(|name| {
            let (kind, da, db, uses_a, uses_b) = match name.to_ascii_lowercase().as_str() {
                "relu" => (ActKind::Relu, 0.0, 0.0, false, false),
                "tanh" => (ActKind::Tanh, 0.0, 0.0, false, false),
                "sigmoid" => (ActKind::Sigmoid, 0.0, 0.0, false, false),
                "affine" => (ActKind::Affine, 1.0, 0.0, true, true),
                "leakyrelu" => (ActKind::LeakyRelu, 0.01, 0.0, true, false),
                "thresholdedrelu" => (ActKind::ThresholdedRelu, 1.0, 0.0, true, false),
                "scaledtanh" => (ActKind::ScaledTanh, 1.0, 1.0, true, true),
                "hardsigmoid" => (ActKind::HardSigmoid, 0.2, 0.5, true, true),
                "elu" => (ActKind::Elu, 1.0, 0.0, true, false),
                "softsign" => (ActKind::Softsign, 0.0, 0.0, false, false),
                "softplus" => (ActKind::Softplus, 0.0, 0.0, false, false),
                other => return Err(OpError::new(format!("unknown activation {other:?}"))),
            };
            let alpha = if uses_a {
                take(&alphas, &mut ai, da)
            } else {
                da
            };
            let beta = if uses_b {
                take(&betas, &mut bi, db)
            } else {
                db
            };
            Ok(Act { kind, alpha, beta })
        })
        .collect()
}

fn f64s(t: Option<&Tensor>) -> Result<Option<Vec<f64>>, OpError> {
    t.map(|t| t.to_f64_vec().map_err(OpError::from)).transpose()
}

fn recurrent(n: &NodeInfo, i: &Inputs<'_>, cell: Cell) -> OpResult {
    let x = i.tensor(0)?;
    let w = i.tensor(1)?;
    let r = i.tensor(2)?;
    let layout = n.attrs.int("layout", 0)?;
    let g = cell.gates();
    let &[d0, d1, input] = x.shape() else {
        return Err(OpError::new("X must be 3-D"));
    };
    let (seq, batch) = if layout == 0 { (d0, d1) } else { (d1, d0) };
    let dirs = w.shape().first().copied().unwrap_or(0);
    let hidden = match n.attrs.opt_int("hidden_size")? {
        Some(h) => usize::try_from(h).map_err(|_| OpError::new("negative hidden_size"))?,
        None => r.shape().last().copied().unwrap_or(0),
    };
    let direction = n.attrs.string("direction", "forward")?;
    let want_dirs = if direction == "bidirectional" { 2 } else { 1 };
    if dirs != want_dirs
        || w.shape() != [dirs, g * hidden, input]
        || r.shape() != [dirs, g * hidden, hidden]
    {
        return Err(OpError::new(format!(
            "W {:?} / R {:?} do not match {dirs} directions, {g} gates, hidden {hidden}",
            w.shape(),
            r.shape()
        )));
    }
    let acts = parse_acts(n, cell, dirs)?;
    let per_dir = cell.default_activations().len();
    if acts.len() < per_dir * dirs {
        return Err(OpError::new("too few activations"));
    }
    let clip = n.attrs.float("clip", 0.0)?;
    let clip = if clip > 0.0 {
        Some(f64::from(clip))
    } else {
        None
    };
    let input_forget = n.attrs.int("input_forget", 0)? != 0;
    let lbr = n.attrs.int("linear_before_reset", 0)? != 0;

    // X as [seq, batch, input].
    let xs = if layout == 0 {
        x.candle().clone()
    } else {
        x.candle().transpose(0, 1)?.contiguous()?
    };
    let xs = xs.to_dtype(DType::F64)?.reshape((seq * batch, input))?;
    let w64 = w.candle().to_dtype(DType::F64)?;
    let r64 = r.candle().to_dtype(DType::F64)?;
    // Only GRU without linear_before_reset reads R's rows on the host.
    let rv = if cell == Cell::Gru && !lbr {
        r.to_f64_vec()?
    } else {
        Vec::new()
    };
    let bv = f64s(i.opt(3)?)?;
    let lens: Option<Vec<i64>> = i.opt(4)?.map(|t| t.to_i64_vec()).transpose()?;
    let h0 = f64s(i.opt(5)?)?;
    let c0 = if cell == Cell::Lstm {
        f64s(i.opt(6)?)?
    } else {
        None
    };
    let p = if cell == Cell::Lstm {
        f64s(i.opt(7)?)?
    } else {
        None
    };

    let mut y = vec![0f64; seq * dirs * batch * hidden];
    let mut y_h = vec![0f64; dirs * batch * hidden];
    let mut y_c = vec![0f64; dirs * batch * hidden];
    let gh = g * hidden;
    for d in 0..dirs {
        let reverse = direction == "reverse" || d == 1;
        let rd = rv
            .get(d * gh * hidden..(d + 1) * gh * hidden)
            .unwrap_or(&[]);
        // X Wᵀ for every step and batch item at once: [seq * batch, gates * hidden].
        let gx_all: Vec<f64> = if seq * batch * gh * input == 0 {
            vec![0.0; seq * batch * gh]
        } else {
            xs.matmul(&w64.get(d)?.t()?)?
                .flatten_all()?
                .to_vec1::<f64>()?
        };
        // Rᵀ row-major, so the per-step product reads it without repacking.
        let rd_t = r64.get(d)?.t()?.contiguous()?;
        let (wb, rb) = match &bv {
            Some(b) => (
                b[d * 2 * gh..d * 2 * gh + gh].to_vec(),
                b[d * 2 * gh + gh..(d + 1) * 2 * gh].to_vec(),
            ),
            None => (vec![0.0; gh], vec![0.0; gh]),
        };
        let a = &acts[d * per_dir..(d + 1) * per_dir];
        let clip_v = |v: f64| clip.map_or(v, |c| v.clamp(-c, c));
        for b in 0..batch {
            let len = lens
                .as_ref()
                .and_then(|l| l.get(b))
                .map_or(seq, |&l| (l.max(0) as usize).min(seq));
            let mut h: Vec<f64> = match &h0 {
                Some(h0) => h0[(d * batch + b) * hidden..(d * batch + b + 1) * hidden].to_vec(),
                None => vec![0.0; hidden],
            };
            let mut c: Vec<f64> = match &c0 {
                Some(c0) => c0[(d * batch + b) * hidden..(d * batch + b + 1) * hidden].to_vec(),
                None => vec![0.0; hidden],
            };
            for step in 0..len {
                let t = if reverse { len - 1 - step } else { step };
                // gx = x Wᵀ + Wb, gr = h Rᵀ + Rb, per gate row.
                let xw = &gx_all[(t * batch + b) * gh..(t * batch + b + 1) * gh];
                let gx: Vec<f64> = wb.iter().zip(xw).map(|(p, q)| p + q).collect();
                let gr: Vec<f64> = if hidden == 0 {
                    rb.clone()
                } else {
                    let hr = candle_core::Tensor::from_slice(&h, (1, hidden), &Device::Cpu)?
                        .matmul(&rd_t)?
                        .flatten_all()?
                        .to_vec1::<f64>()?;
                    rb.iter().zip(&hr).map(|(p, q)| p + q).collect()
                };
                match cell {
                    Cell::Rnn => {
                        for k in 0..hidden {
                            h[k] = a[0].apply(clip_v(gx[k] + gr[k]));
                        }
                    }
                    Cell::Lstm => {
                        let peep = |which: usize, k: usize| {
                            p.as_ref()
                                .map_or(0.0, |p| p[d * 3 * hidden + which * hidden + k])
                        };
                        let mut new_c = vec![0.0; hidden];
                        for k in 0..hidden {
                            let pre = |gate: usize| gx[gate * hidden + k] + gr[gate * hidden + k];
                            let it = a[0].apply(clip_v(pre(0) + peep(0, k) * c[k]));
                            let ft = if input_forget {
                                1.0 - it
                            } else {
                                a[0].apply(clip_v(pre(2) + peep(2, k) * c[k]))
                            };
                            let ct = a[1].apply(clip_v(pre(3)));
                            new_c[k] = ft * c[k] + it * ct;
                        }
                        for k in 0..hidden {
                            let pre = gx[hidden + k] + gr[hidden + k];
                            let ot = a[0].apply(clip_v(pre + peep(1, k) * new_c[k]));
                            h[k] = ot * a[2].apply(new_c[k]);
                        }
                        c = new_c;
                    }
                    Cell::Gru => {
                        let zt: Vec<f64> = (0..hidden)
                            .map(|k| a[0].apply(clip_v(gx[k] + gr[k])))
                            .collect();
                        let rt: Vec<f64> = (0..hidden)
                            .map(|k| a[0].apply(clip_v(gx[hidden + k] + gr[hidden + k])))
                            .collect();
                        let hh = 2 * hidden;
                        let new_h: Vec<f64> = if lbr {
                            (0..hidden)
                                .map(|k| a[1].apply(clip_v(gx[hh + k] + rt[k] * gr[hh + k])))
                                .collect()
                        } else {
                            // (rt ⊙ H) Rhᵀ + Rbh.
                            let rh_in: Vec<f64> = h.iter().zip(&rt).map(|(p, q)| p * q).collect();
                            (0..hidden)
                                .map(|k| {
                                    let row = &rd[(hh + k) * hidden..(hh + k + 1) * hidden];
                                    let s: f64 = row.iter().zip(&rh_in).map(|(p, q)| p * q).sum();
                                    a[1].apply(clip_v(gx[hh + k] + s + rb[hh + k]))
                                })
                                .collect()
                        };
                        for k in 0..hidden {
                            h[k] = (1.0 - zt[k]) * new_h[k] + zt[k] * h[k];
                        }
                    }
                }
                let base = ((t * dirs + d) * batch + b) * hidden;
                y[base..base + hidden].copy_from_slice(&h);
            }
            let base = (d * batch + b) * hidden;
            y_h[base..base + hidden].copy_from_slice(&h);
            y_c[base..base + hidden].copy_from_slice(&c);
        }
    }
    let elem = x.elem_type();
    let y_t = if layout == 0 {
        from_f64(elem, &[seq, dirs, batch, hidden], y)?
    } else {
        let t = from_f64(elem, &[seq, dirs, batch, hidden], y)?;
        crate::ops::shape::permuted(&t, &[2, 0, 1, 3])?
    };
    let state = |v: Vec<f64>| -> Result<Tensor, OpError> {
        let t = from_f64(elem, &[dirs, batch, hidden], v)?;
        if layout == 0 {
            Ok(t)
        } else {
            crate::ops::shape::permuted(&t, &[1, 0, 2])
        }
    };
    let mut out = vec![Value::Tensor(y_t), Value::Tensor(state(y_h)?)];
    if cell == Cell::Lstm {
        out.push(Value::Tensor(state(y_c)?));
    }
    Ok(out)
}
