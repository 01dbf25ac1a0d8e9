//! Recurrent layers: `LSTM`, `GRU` and `RNN` (forward, reverse, bidirectional;
//! `sequence_lens`, initial states, peepholes, `clip`, `input_forget`,
//! `linear_before_reset`, `layout`, custom activations).
//!
//! Design: computed in f32 (f64 for f64 models) on host buffers allocated once per
//! call. W and R are read in place as transposed operands of the `gemm` crate
//! ([`sgemm`]), so they are never converted or copied for an f32 model. The input
//! projection X·Wᵀ + Wb of all steps is one product (LSTM and RNN add Rb there
//! too, once); the recurrent product H·Rᵀ is one product per step for all batch
//! items at once, and the gates run on the host, fused into one loop per item.
//! The plain f32 LSTM (default activations, no clip, peepholes or coupled gates)
//! runs its gates as whole-slice passes of [`fastmath`]'s vectorised sigmoid and
//! tanh; when every item runs all steps, the recurrent product accumulates straight
//! into the step's input projection, and at batch 1 with two or more threads each
//! step is split over two threads by hidden unit. (The per-step product at batch 1
//! is bound by reading R, 4·hidden² values, not by the `gemm` call's overhead.)

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use candle_core::{Device, WithDType};

use crate::ops::fused::with_host;
use crate::ops::sgemm::{self, GemmElem, MatRef};
use crate::ops::{fastmath, simd};
use crate::ops::{Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::{ElemType, Tensor};
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
    fn apply<T: Real>(self, x: T) -> T {
        let (a, b) = (T::from_f64(self.alpha), T::from_f64(self.beta));
        let (zero, one) = (T::zero(), T::one());
        match self.kind {
            // NaN maps to 0, as f64::max does.
            ActKind::Relu => {
                if x > zero {
                    x
                } else {
                    zero
                }
            }
            ActKind::Tanh => x.tanh(),
            ActKind::Sigmoid => one / (one + (-x).exp()),
            ActKind::Affine => a * x + b,
            ActKind::LeakyRelu => {
                if x < zero {
                    a * x
                } else {
                    x
                }
            }
            ActKind::ThresholdedRelu => {
                if x > a {
                    x
                } else {
                    zero
                }
            }
            ActKind::ScaledTanh => a * (b * x).tanh(),
            ActKind::HardSigmoid => clamp(a * x + b, zero, one),
            ActKind::Elu => {
                if x < zero {
                    a * (x.exp() - one)
                } else {
                    x
                }
            }
            ActKind::Softsign => x / (one + x.abs()),
            ActKind::Softplus => x.exp().ln_1p(),
        }
    }
}

/// `v` limited to `[lo, hi]`; NaN stays NaN (as `f64::clamp`).
fn clamp<T: PartialOrd>(v: T, lo: T, hi: T) -> T {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

/// The element types the recurrences compute in: f64 for f64 models, f32 for
/// every other float type.
trait Real: GemmElem + WithDType + Send + Sync + std::ops::Neg<Output = Self> {
    fn exp(self) -> Self;
    fn tanh(self) -> Self;
    fn abs(self) -> Self;
    fn ln_1p(self) -> Self;
    /// The logistic sigmoid of every element, in place.
    fn sigmoid_all(v: &mut [Self]);
    /// tanh of every element, in place.
    fn tanh_all(v: &mut [Self]);
    /// The default-activation LSTM cell for one item (or a range of its hidden
    /// units): `gates` holds the pre-activations of i, o, f and c, as long as `c`
    /// each (overwritten with the activations); `c` is updated, `h` written.
    fn lstm_cell(gates: [&mut [Self]; 4], c: &mut [Self], h: &mut [Self]);
    /// The value's bit pattern, widened to 64 bits, and back.
    fn bits(self) -> u64;
    fn from_bits(b: u64) -> Self;
    /// `y[j] += Σ_k r[(row0 + j) * rs + k] · x[k]` (see `simd::matvec_acc`).
    fn matvec_acc(
        r: &[Self],
        rs: usize,
        row0: usize,
        x: &[Self],
        y: &mut [Self],
    ) -> Result<(), OpError>;
    /// `y[s][j] += Σ_k rt[k * ld + cols[s] + j] · x[k]`, summed over k
    /// backwards if `reverse` (see `simd::matvec_t_acc4`).
    fn matvec_t_acc4(
        rt: &[Self],
        ld: usize,
        x: &[Self],
        cols: [usize; 4],
        y: [&mut [Self]; 4],
        reverse: bool,
    ) -> Result<(), OpError>;
}

macro_rules! real {
    ($t:ty, $sigmoid_all:expr, $tanh_all:expr, $lstm_cell:expr, $matvec:expr, $matvec_t:expr) => {
        impl Real for $t {
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            fn sigmoid_all(v: &mut [Self]) {
                $sigmoid_all(v)
            }
            fn tanh_all(v: &mut [Self]) {
                $tanh_all(v)
            }
            fn lstm_cell(gates: [&mut [Self]; 4], c: &mut [Self], h: &mut [Self]) {
                $lstm_cell(gates, c, h)
            }
            fn bits(self) -> u64 {
                u64::from(self.to_bits())
            }
            fn from_bits(b: u64) -> Self {
                <$t>::from_bits(b as _)
            }
            fn matvec_acc(
                r: &[Self],
                rs: usize,
                row0: usize,
                x: &[Self],
                y: &mut [Self],
            ) -> Result<(), OpError> {
                $matvec(r, rs, row0, x, y)
            }
            fn matvec_t_acc4(
                rt: &[Self],
                ld: usize,
                x: &[Self],
                cols: [usize; 4],
                y: [&mut [Self]; 4],
                reverse: bool,
            ) -> Result<(), OpError> {
                $matvec_t(rt, ld, x, cols, y, reverse)
            }
        }
    };
}
// f32 gates use the vectorised approximations (a few ulps), at the CPU's vector
// width; f64 keeps libm and plain loops.
real!(
    f32,
    fastmath::sigmoid_in_place,
    fastmath::tanh_in_place,
    simd::lstm_cell,
    simd::matvec_acc,
    simd::matvec_t_acc4
);
real!(
    f64,
    |v: &mut [f64]| v.iter_mut().for_each(|x| *x = sigmoid_f64(*x)),
    |v: &mut [f64]| v.iter_mut().for_each(|x| *x = x.tanh()),
    lstm_cell_f64,
    matvec_acc_f64,
    matvec_t_acc4_f64
);

/// [`Real::matvec_acc`] in f64: plain dot products.
fn matvec_acc_f64(
    r: &[f64],
    rs: usize,
    row0: usize,
    x: &[f64],
    y: &mut [f64],
) -> Result<(), OpError> {
    for (j, o) in y.iter_mut().enumerate() {
        let start = (row0 + j) * rs;
        let row = r
            .get(start..start + x.len())
            .ok_or_else(|| OpError::new("internal: matvec row out of range"))?;
        *o += row.iter().zip(x).map(|(a, b)| a * b).sum::<f64>();
    }
    Ok(())
}

/// [`Real::matvec_t_acc4`] in f64: plain sums.
fn matvec_t_acc4_f64(
    rt: &[f64],
    ld: usize,
    x: &[f64],
    cols: [usize; 4],
    y: [&mut [f64]; 4],
    _reverse: bool,
) -> Result<(), OpError> {
    for (ys, c) in y.into_iter().zip(cols) {
        for (j, o) in ys.iter_mut().enumerate() {
            let mut acc = 0.0;
            for (k, xk) in x.iter().enumerate() {
                let v = rt
                    .get(k * ld + c + j)
                    .filter(|_| c + j < ld)
                    .ok_or_else(|| OpError::new("internal: matvec column out of range"))?;
                acc += v * xk;
            }
            *o += acc;
        }
    }
    Ok(())
}

fn sigmoid_f64(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// [`Real::lstm_cell`] in f64, with libm.
fn lstm_cell_f64(gates: [&mut [f64]; 4], c: &mut [f64], h: &mut [f64]) {
    let [i, o, f, g] = gates;
    for k in 0..c.len() {
        let new_c = sigmoid_f64(f[k]) * c[k] + sigmoid_f64(i[k]) * g[k].tanh();
        c[k] = new_c;
        h[k] = sigmoid_f64(o[k]) * new_c.tanh();
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

/// The private attribute marking a recurrent node whose constant W the planner
/// stored transposed, as [dirs, input, gates * hidden]: the input projection of
/// all steps then reads it row by row instead of the `gemm` crate transposing
/// it on every call (10% of a 2-layer LSTM's time). See `plan::pretranspose_weights`.
pub(crate) const W_TRANSPOSED: &str = "flotilla.rnn_w_transposed";

/// The private attribute marking an `LSTM` whose constant R the planner stored
/// transposed and in panels (see [`pack_recurrent`]): the batch-1 step then
/// reads it with [`simd::matvec_t_acc4`], which needs no horizontal sums, and
/// the batched step reads it row by row. See `plan::pretranspose_weights`.
pub(crate) const R_TRANSPOSED: &str = "flotilla.rnn_r_transposed";

/// Hidden units per panel of a packed R (see [`pack_recurrent`]).
const PANEL: usize = 64;

/// An LSTM's R ([dirs, 4 * hidden, hidden]) transposed and packed in panels of
/// [`PANEL`] hidden units, for [`R_TRANSPOSED`]: per direction, panel p (units
/// `u0 = 64 p` to `u0 + pw`, `pw = min(64, hidden - u0)`) starts at `u0 * 4 *
/// hidden` and holds, for each input unit k, the four gates' `pw` columns of
/// Rᵀ one after another (`[hidden][4][pw]`). The result keeps the shape
/// [dirs, hidden, 4 * hidden]; with hidden <= 64 it is plain Rᵀ.
///
/// Design: a batch-1 step reads all of R from L2, once per step. In Rᵀ as it
/// is, a panel's rows are four 256-byte pieces 2 KiB apart; packed, each
/// panel is one forward stream, which the prefetchers keep up with: 2.63 µs
/// per 128-unit step against 3.14 (a standalone loop over the kernel,
/// AVX-512), 2.47 with the direction alternating per step.
pub(crate) fn pack_recurrent(r: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    let (dirs, gh, hidden) = r.dims3()?;
    if gh != 4 * hidden {
        candle_core::bail!("R {:?} is not [dirs, 4 * hidden, hidden]", r.dims());
    }
    // [dirs, hidden(k), 4, hidden(u)]
    let rt = r.transpose(1, 2)?.reshape((dirs, hidden, 4, hidden))?;
    let panels = (0..hidden)
        .step_by(PANEL)
        .map(|u0| {
            let pw = PANEL.min(hidden - u0);
            rt.narrow(3, u0, pw)?
                .contiguous()?
                .reshape((dirs, hidden * 4 * pw))
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    if panels.is_empty() {
        return rt.reshape((dirs, hidden, gh));
    }
    candle_core::Tensor::cat(&panels, 1)?.reshape((dirs, hidden, gh))
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
    // The planner may have stored a constant W as [dirs, input, gates * hidden].
    let w_transposed = n.attrs.int(W_TRANSPOSED, 0)? != 0;
    let w_want = if w_transposed {
        [dirs, input, g * hidden]
    } else {
        [dirs, g * hidden, input]
    };
    let r_transposed = n.attrs.int(R_TRANSPOSED, 0)? != 0;
    if r_transposed && cell != Cell::Lstm {
        return Err(OpError::new("internal: only an LSTM reads R transposed"));
    }
    let r_want = if r_transposed {
        [dirs, hidden, g * hidden]
    } else {
        [dirs, g * hidden, hidden]
    };
    if dirs != want_dirs || w.shape() != w_want || r.shape() != r_want {
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

    let lens: Vec<usize> = match i.opt(4)? {
        Some(t) => {
            let l = t.to_i64_vec()?;
            if l.len() != batch {
                return Err(OpError::new(format!(
                    "sequence_lens has {} values for batch {batch}",
                    l.len()
                )));
            }
            l.iter().map(|&l| (l.max(0) as usize).min(seq)).collect()
        }
        None => vec![seq; batch],
    };
    let spec = Spec {
        cell,
        seq,
        batch,
        input,
        hidden,
        dirs,
        reverse: direction == "reverse",
        acts,
        per_dir,
        clip,
        input_forget,
        lbr,
        lens,
        w_transposed,
        r_transposed,
    };
    // X as [seq, batch, input].
    let xs = if layout == 0 {
        x.candle().clone()
    } else {
        x.candle().transpose(0, 1)?.contiguous()?
    };
    let (y, y_h, y_c) = if x.elem_type() == ElemType::F64 {
        outputs::<f64>(&spec, i, &xs)?
    } else {
        outputs::<f32>(&spec, i, &xs)?
    };
    let elem = x.elem_type();
    let y_t = Tensor::from_candle(elem, y.reshape((seq, dirs, batch, hidden))?)?;
    let y_t = if layout == 0 {
        y_t
    } else {
        crate::ops::shape::permuted(&y_t, &[2, 0, 1, 3])?
    };
    let state = |v: candle_core::Tensor| -> Result<Tensor, OpError> {
        let t = Tensor::from_candle(elem, v.reshape((dirs, batch, hidden))?)?;
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

/// One recurrent node's resolved attributes and sizes.
struct Spec {
    cell: Cell,
    seq: usize,
    batch: usize,
    input: usize,
    hidden: usize,
    dirs: usize,
    /// `direction` is "reverse" (the second direction of a bidirectional node
    /// always runs in reverse).
    reverse: bool,
    acts: Vec<Act>,
    per_dir: usize,
    clip: Option<f64>,
    input_forget: bool,
    lbr: bool,
    /// Steps per batch item, clipped to `seq`.
    lens: Vec<usize>,
    /// W is stored transposed, [dirs, input, gates * hidden] (see [`W_TRANSPOSED`]).
    w_transposed: bool,
    /// R is stored transposed, [dirs, hidden, 4 * hidden] (see [`R_TRANSPOSED`]).
    r_transposed: bool,
}

/// The optional input `idx` as a host vector of `T` with `len` values (or None).
fn host_opt<T: Real>(i: &Inputs<'_>, idx: usize, len: usize) -> Result<Option<Vec<T>>, OpError> {
    match i.opt(idx)? {
        None => Ok(None),
        Some(t) if t.len() == len => with_host(t.candle(), |v: &[T]| Ok(Some(v.to_vec()))),
        Some(t) => Err(OpError::new(format!(
            "input {idx} has {} values, expected {len}",
            t.len()
        ))),
    }
}

/// Y ([seq, dirs, batch, hidden]), Y_h and Y_c ([dirs, batch, hidden]) computed in
/// `T`, with W and R read in place (no transposed copies).
fn outputs<T: Real>(
    s: &Spec,
    i: &Inputs<'_>,
    xs: &candle_core::Tensor,
) -> Result<
    (
        candle_core::Tensor,
        candle_core::Tensor,
        candle_core::Tensor,
    ),
    OpError,
> {
    let (w, r) = (i.tensor(1)?, i.tensor(2)?);
    let (batch, hidden, dirs) = (s.batch, s.hidden, s.dirs);
    let gh = s.cell.gates() * hidden;
    let bias = host_opt::<T>(i, 3, dirs * 2 * gh)?;
    let h0 = host_opt::<T>(i, 5, dirs * batch * hidden)?;
    let (c0, peep) = if s.cell == Cell::Lstm {
        (
            host_opt::<T>(i, 6, dirs * batch * hidden)?,
            host_opt::<T>(i, 7, dirs * 3 * hidden)?,
        )
    } else {
        (None, None)
    };
    let mut y = vec![T::zero(); s.seq * dirs * batch * hidden];
    let mut y_h = vec![T::zero(); dirs * batch * hidden];
    let mut y_c = vec![T::zero(); dirs * batch * hidden];
    with_host(xs, |xv: &[T]| {
        with_host(w.candle(), |wv: &[T]| {
            with_host(r.candle(), |rv: &[T]| {
                let mut run = Run::<T>::new(s);
                for d in 0..dirs {
                    let states = d * batch * hidden..(d + 1) * batch * hidden;
                    let dir = Direction {
                        d,
                        reverse: s.reverse || d == 1,
                        w: &wv[d * gh * s.input..(d + 1) * gh * s.input],
                        r: RecurWeights {
                            data: &rv[d * gh * hidden..(d + 1) * gh * hidden],
                            transposed: s.r_transposed,
                        },
                        bias: bias.as_ref().map(|b| &b[d * 2 * gh..(d + 1) * 2 * gh]),
                        peep: peep
                            .as_ref()
                            .map(|p| &p[d * 3 * hidden..(d + 1) * 3 * hidden]),
                        acts: &s.acts[d * s.per_dir..(d + 1) * s.per_dir],
                    };
                    let h0 = h0.as_ref().map(|v| &v[states.clone()]);
                    let c0 = c0.as_ref().map(|v| &v[states.clone()]);
                    run.direction(s, &dir, xv, h0, c0, &mut y)?;
                    y_h[states.clone()].copy_from_slice(&run.h);
                    y_c[states].copy_from_slice(&run.c);
                }
                Ok(())
            })
        })
    })?;
    let cpu = &Device::Cpu;
    Ok((
        candle_core::Tensor::from_vec(y, s.seq * dirs * batch * hidden, cpu)?,
        candle_core::Tensor::from_vec(y_h, dirs * batch * hidden, cpu)?,
        candle_core::Tensor::from_vec(y_c, dirs * batch * hidden, cpu)?,
    ))
}

/// The per-direction weights, borrowed from W, R, B and P.
struct Direction<'a, T> {
    d: usize,
    reverse: bool,
    /// [gates * hidden, input]
    w: &'a [T],
    r: RecurWeights<'a, T>,
    /// Wb then Rb, [2 * gates * hidden].
    bias: Option<&'a [T]>,
    /// [3 * hidden]
    peep: Option<&'a [T]>,
    acts: &'a [Act],
}

/// One direction's R: [gates * hidden, hidden] as the model stores it, or
/// an LSTM's transposed and packed (see [`pack_recurrent`]).
#[derive(Clone, Copy)]
struct RecurWeights<'a, T> {
    data: &'a [T],
    transposed: bool,
}

impl<T: Real> RecurWeights<'_, T> {
    /// `dst` ([batch, gates * hidden], row stride gates * hidden) gets (or,
    /// with `accumulate`, adds) H Rᵀ for `h` ([batch, hidden]).
    fn gemm_into(
        self,
        batch: usize,
        hidden: usize,
        dst: &mut [T],
        accumulate: bool,
        h: &[T],
    ) -> Result<(), OpError> {
        let gh = self.data.len() / hidden.max(1);
        let h_in = MatRef::rows(h, hidden);
        if !self.transposed {
            let rt = MatRef::transposed(self.data, hidden);
            return sgemm::gemm(batch, gh, hidden, dst, gh, accumulate, h_in, rt, 1);
        }
        // Each gate's columns of each panel, as an [hidden, pw] operand.
        for u0 in (0..hidden).step_by(PANEL) {
            let pw = PANEL.min(hidden - u0);
            let panel = &self.data[u0 * 4 * hidden..(u0 + pw) * 4 * hidden];
            for g in 0..4 {
                let rt = MatRef {
                    data: &panel[g * pw..],
                    rs: 4 * pw,
                    cs: 1,
                };
                let out = &mut dst[g * hidden + u0..];
                sgemm::gemm(batch, pw, hidden, out, gh, accumulate, h_in, rt, 1)?;
            }
        }
        Ok(())
    }

    /// Adds `h_prev` Rᵀ to an LSTM's gate pre-activations for hidden units
    /// `k0..k0 + n` (`gates[g][..n]` gets gate g's units), at step `step`.
    ///
    /// Design: a packed R is read forwards at even steps and backwards at
    /// odd ones (panels and rows), so each step starts on the rows the last
    /// one ended on, which are still in L1 (the step is bound by streaming R
    /// from L2).
    fn add_lstm_units(
        self,
        h_prev: &[T],
        k0: usize,
        mut gates: [&mut [T]; 4],
        step: usize,
    ) -> Result<(), OpError> {
        let hidden = h_prev.len();
        if self.transposed {
            let (n, reverse) = (gates[0].len(), step % 2 == 1);
            let panels = hidden.div_ceil(PANEL);
            for i in 0..panels {
                let u0 = PANEL * if reverse { panels - 1 - i } else { i };
                let pw = PANEL.min(hidden - u0);
                // This panel's share of units k0..k0 + n.
                let (a, b) = (k0.max(u0), (k0 + n).min(u0 + pw));
                if a >= b {
                    continue;
                }
                let panel = self
                    .data
                    .get(u0 * 4 * hidden..(u0 + pw) * 4 * hidden)
                    .ok_or_else(|| OpError::new("internal: packed R panel out of range"))?;
                let cols = [0, 1, 2, 3].map(|g| g * pw + a - u0);
                let ys = gates.each_mut().map(|y| &mut y[a - k0..b - k0]);
                T::matvec_t_acc4(panel, 4 * pw, h_prev, cols, ys, reverse)?;
            }
            return Ok(());
        }
        for (gate, dst) in gates.into_iter().enumerate() {
            T::matvec_acc(self.data, hidden, gate * hidden + k0, h_prev, dst)?;
        }
        Ok(())
    }
}

/// Below this many multiply-adds per step, a batch-1 recurrent product stays on one
/// thread (a join costs about a microsecond).
const SPLIT_MIN_MACS: usize = 1 << 15;

/// The four gates' parts (i, o, f, c) of one item's `4 * hidden` pre-activations.
fn gate_slices_mut<T>(pre: &mut [T], hidden: usize) -> [&mut [T]; 4] {
    let (i, rest) = pre.split_at_mut(hidden);
    let (o, rest) = rest.split_at_mut(hidden);
    let (f, c) = rest.split_at_mut(hidden);
    [i, o, f, c]
}

/// One step of the plain LSTM for hidden units `k0..k0 + c.len()` of a batch-1
/// item: adds `h_prev` times those units' rows of R (`r`, [4 * hidden, hidden])
/// into each gate's pre-activations, then runs the cell, writing `h_next`.
fn lstm_units<T: Real>(
    r: RecurWeights<'_, T>,
    step: usize,
    h_prev: &[T],
    k0: usize,
    gates: [&mut [T]; 4],
    c: &mut [T],
    h_next: &mut [T],
) -> Result<(), OpError> {
    let n = c.len();
    if n == 0 {
        return Ok(());
    }
    let [i, o, f, g] = gates;
    r.add_lstm_units(
        h_prev,
        k0,
        [&mut i[..n], &mut o[..n], &mut f[..n], &mut g[..n]],
        step,
    )?;
    T::lstm_cell([i, o, f, g], c, h_next);
    Ok(())
}

/// How long a split batch-1 LSTM waits for a second worker to take its other
/// half before running both halves on the calling thread.
const LOCKSTEP_WAIT: std::time::Duration = std::time::Duration::from_micros(50);

/// The state two halves of a batch-1 LSTM share while they run every step in
/// lockstep, one per thread.
///
/// Design: splitting each step with `rayon::join` (as before) left the waiting
/// thread yielding and sleeping inside rayon 64 times per run, and let either
/// thread take either half, so each half's rows of R moved between the two
/// cores' caches; at 2 threads lstm_2l ran no faster than at 1. Here each half
/// stays on one thread for the whole sequence and the threads meet once per
/// step on two counters, spinning: H is double-buffered in `h` (bit patterns in
/// atomics, so both threads may read and write it), step t reads buffer t % 2
/// and each half writes its units of buffer (t + 1) % 2; a half starts step t + 1
/// only when the other has finished step t, so neither overwrites what the
/// other still reads.
struct Lockstep {
    h: [Vec<AtomicU64>; 2],
    /// Steps finished by each half; `usize::MAX` after a half failed.
    done: [AtomicUsize; 2],
    started: AtomicBool,
    error: std::sync::Mutex<Option<OpError>>,
}

impl Lockstep {
    fn new<T: Real>(h0: &[T]) -> Self {
        let buf = || {
            h0.iter()
                .map(|v| AtomicU64::new(v.bits()))
                .collect::<Vec<_>>()
        };
        Self {
            h: [buf(), buf()],
            done: [AtomicUsize::new(0), AtomicUsize::new(0)],
            started: AtomicBool::new(false),
            error: std::sync::Mutex::new(None),
        }
    }

    /// H after `steps` steps.
    fn read_h<T: Real>(&self, steps: usize, h: &mut [T]) {
        for (d, a) in h.iter_mut().zip(&self.h[steps % 2]) {
            *d = T::from_bits(a.load(Ordering::Acquire));
        }
    }
}

/// One half's hidden units (from `k0`, as many as `c`) and, per step in run
/// order, its parts of the gate pre-activations and of that step's Y row.
struct Half<'a, T> {
    k0: usize,
    c: &'a mut [T],
    steps: Vec<([&'a mut [T]; 4], &'a mut [T])>,
}

impl<'a, T: Real> Half<'a, T> {
    fn new(k0: usize, c: &'a mut [T], steps: usize) -> Self {
        Self {
            k0,
            c,
            steps: Vec::with_capacity(steps),
        }
    }

    /// Runs every step, meeting the other half (`theirs`) after each.
    fn run(
        self,
        r: RecurWeights<'_, T>,
        shared: &Lockstep,
        mine: &AtomicUsize,
        theirs: &AtomicUsize,
    ) -> Result<(), OpError> {
        let result = self.steps_with(r, shared, |step| {
            mine.store(step + 1, Ordering::Release);
            wait_until(|| theirs.load(Ordering::Acquire) > step);
        });
        if result.is_err() {
            // Lets the other half run to its end instead of waiting forever.
            mine.store(usize::MAX, Ordering::Release);
        }
        result
    }

    /// Runs both halves on this thread, one after the other at each step (the
    /// second half reads buffer step % 2, which the first left as it was).
    fn run_with(
        mut self,
        mut other: Half<'_, T>,
        r: RecurWeights<'_, T>,
        shared: &Lockstep,
    ) -> Result<(), OpError> {
        let mut h_prev = vec![T::zero(); shared.h[0].len()];
        let (mine, theirs) = (
            std::mem::take(&mut self.steps),
            std::mem::take(&mut other.steps),
        );
        for (step, ((g, y), (og, oy))) in mine.into_iter().zip(theirs).enumerate() {
            self.step(r, shared, step, g, y, &mut h_prev)?;
            other.step(r, shared, step, og, oy, &mut h_prev)?;
        }
        Ok(())
    }

    fn steps_with(
        mut self,
        r: RecurWeights<'_, T>,
        shared: &Lockstep,
        mut meet: impl FnMut(usize),
    ) -> Result<(), OpError> {
        let mut h_prev = vec![T::zero(); shared.h[0].len()];
        let steps = std::mem::take(&mut self.steps);
        for (step, (gates, y)) in steps.into_iter().enumerate() {
            self.step(r, shared, step, gates, y, &mut h_prev)?;
            meet(step);
        }
        Ok(())
    }

    /// Step `step` of this half: reads H from buffer step % 2, writes this
    /// half's units of buffer (step + 1) % 2 and of `y`.
    fn step(
        &mut self,
        r: RecurWeights<'_, T>,
        shared: &Lockstep,
        step: usize,
        gates: [&mut [T]; 4],
        y: &mut [T],
        h_prev: &mut [T],
    ) -> Result<(), OpError> {
        read_into(&shared.h[step % 2], h_prev);
        lstm_units(r, step, h_prev, self.k0, gates, self.c, y)?;
        write_from(y, &shared.h[(step + 1) % 2][self.k0..]);
        Ok(())
    }
}

/// Spins until `ready`, yielding the core after the first few thousand rounds:
/// on a busy machine the other half's thread may be descheduled, and spinning
/// through the whole time slice would only delay it.
fn wait_until(ready: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !ready() {
        if spins < 4096 {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

fn read_into<T: Real>(src: &[AtomicU64], dst: &mut [T]) {
    for (d, a) in dst.iter_mut().zip(src) {
        *d = T::from_bits(a.load(Ordering::Acquire));
    }
}

fn write_from<T: Real>(src: &[T], dst: &[AtomicU64]) {
    for (v, a) in src.iter().zip(dst) {
        a.store(v.bits(), Ordering::Release);
    }
}

/// Buffers reused by every step and direction, allocated once per call.
struct Run<T> {
    /// X Wᵀ + Wb for every step and batch item: [seq * batch, gates * hidden].
    gx: Vec<T>,
    /// H Rᵀ + Rb for the current step: [batch, gates * hidden].
    gr: Vec<T>,
    /// Hidden and cell state: [batch, hidden].
    h: Vec<T>,
    c: Vec<T>,
    /// GRU: the update gate, and (rt ⊙ H) and its product with Rhᵀ.
    z: Vec<T>,
    rh: Vec<T>,
    hn: Vec<T>,
    /// LSTM fast path: one item's gate pre-activations, then activations [4 * hidden];
    /// and tanh of the new cell state [hidden].
    gates: Vec<T>,
    c_act: Vec<T>,
}

impl<T: Real> Run<T> {
    fn new(s: &Spec) -> Self {
        let gh = s.cell.gates() * s.hidden;
        let bh = s.batch * s.hidden;
        let gru = s.cell == Cell::Gru;
        Self {
            gx: vec![T::zero(); s.seq * s.batch * gh],
            gr: vec![T::zero(); s.batch * gh],
            h: vec![T::zero(); bh],
            c: vec![T::zero(); bh],
            z: vec![T::zero(); if gru { bh } else { 0 }],
            rh: vec![T::zero(); if gru { bh } else { 0 }],
            hn: vec![T::zero(); if gru { bh } else { 0 }],
            gates: vec![T::zero(); if gru { 0 } else { gh }],
            c_act: vec![T::zero(); s.hidden],
        }
    }

    /// The plain LSTM (see `plain_lstm` in [`Self::direction`]) when every item runs
    /// all `steps` steps: each step adds H Rᵀ straight into that step's rows of `gx`
    /// (which then hold the gates' pre-activations) and runs the cell on them. At
    /// batch 1 with more than one thread, each of two threads computes the products
    /// and the cell of half of the hidden units.
    fn plain_lstm_uniform(
        &mut self,
        s: &Spec,
        dir: &Direction<'_, T>,
        steps: usize,
        y: &mut [T],
    ) -> Result<(), OpError> {
        let (batch, hidden) = (s.batch, s.hidden);
        let gh = 4 * hidden;
        let split = batch == 1 && gh * hidden >= SPLIT_MIN_MACS && sgemm::threads() > 1;
        let time = |step: usize| {
            if dir.reverse {
                steps - 1 - step
            } else {
                step
            }
        };
        let y_at = |t: usize, b: usize| ((t * s.dirs + dir.d) * batch + b) * hidden;
        if !split {
            for step in 0..steps {
                let t = time(step);
                let pre = &mut self.gx[t * batch * gh..(t + 1) * batch * gh];
                if batch == 1 {
                    dir.r
                        .add_lstm_units(&self.h, 0, gate_slices_mut(pre, hidden), step)?;
                } else {
                    dir.r.gemm_into(batch, hidden, pre, true, &self.h)?;
                }
                for b in 0..batch {
                    let c = &mut self.c[b * hidden..(b + 1) * hidden];
                    let h = &mut self.h[b * hidden..(b + 1) * hidden];
                    let pre = &mut pre[b * gh..(b + 1) * gh];
                    T::lstm_cell(gate_slices_mut(pre, hidden), c, h);
                    y[y_at(t, b)..y_at(t, b) + hidden].copy_from_slice(h);
                }
            }
            return Ok(());
        }
        // Hidden units [0, mid) on this thread, [mid, hidden) on another, each
        // half running every step in lockstep with the other (see `Lockstep`).
        let mid = (hidden / 2).div_ceil(8) * 8;
        let mut chunks: Vec<Option<&mut [T]>> = self.gx.chunks_mut(gh).map(Some).collect();
        let mut rows: Vec<Option<&mut [T]>> = y.chunks_mut(hidden).map(Some).collect();
        let (c0, c1) = self.c.split_at_mut(mid);
        let mut halves = (Half::new(0, c0, steps), Half::new(mid, c1, steps));
        for step in 0..steps {
            let t = time(step);
            let (Some(chunk), Some(row)) = (
                chunks.get_mut(t).and_then(Option::take),
                rows.get_mut(y_at(t, 0) / hidden).and_then(Option::take),
            ) else {
                return Err(OpError::new("internal: LSTM step out of range"));
            };
            let [i, o, f, g] = gate_slices_mut(chunk, hidden);
            let ((i0, i1), (o0, o1)) = (i.split_at_mut(mid), o.split_at_mut(mid));
            let ((f0, f1), (g0, g1)) = (f.split_at_mut(mid), g.split_at_mut(mid));
            let (y0, y1) = row.split_at_mut(mid);
            halves.0.steps.push(([i0, o0, f0, g0], y0));
            halves.1.steps.push(([i1, o1, f1, g1], y1));
        }
        let shared = Lockstep::new(&self.h);
        let other = std::sync::Mutex::new(Some(halves.1));
        let result = rayon::scope(|sc| {
            sc.spawn(|_| {
                let taken = other.lock().map(|mut o| o.take()).ok().flatten();
                if let Some(half) = taken {
                    shared.started.store(true, Ordering::Release);
                    let r = half.run(dir.r, &shared, &shared.done[1], &shared.done[0]);
                    if let Err(e) = r {
                        *shared.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    }
                }
            });
            // Wait briefly for another worker to take the second half; if none
            // does, take it back and run both halves here.
            #[cfg(test)]
            let wait = if tests::ALONE.load(Ordering::Relaxed) {
                std::time::Duration::ZERO
            } else {
                LOCKSTEP_WAIT
            };
            #[cfg(not(test))]
            let wait = LOCKSTEP_WAIT;
            let deadline = std::time::Instant::now() + wait;
            while !shared.started.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
                std::hint::spin_loop();
            }
            let alone = other.lock().map(|mut o| o.take()).ok().flatten();
            match alone {
                Some(second) => halves.0.run_with(second, dir.r, &shared),
                None => {
                    wait_until(|| shared.started.load(Ordering::Acquire));
                    halves
                        .0
                        .run(dir.r, &shared, &shared.done[0], &shared.done[1])
                }
            }
        });
        if let Some(e) = shared
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            return Err(e);
        }
        result?;
        shared.read_h(steps, &mut self.h);
        Ok(())
    }

    /// Runs direction `dir` over the sequence, writing its slots of `y`; leaves the
    /// final states in `h` and `c`.
    fn direction(
        &mut self,
        s: &Spec,
        dir: &Direction<'_, T>,
        xv: &[T],
        h0: Option<&[T]>,
        c0: Option<&[T]>,
        y: &mut [T],
    ) -> Result<(), OpError> {
        let (batch, hidden, input) = (s.batch, s.hidden, s.input);
        let gh = s.cell.gates() * hidden;
        let zeros = vec![T::zero(); 2 * gh];
        let bias = dir.bias.unwrap_or(&zeros);
        let (wb, rb) = bias.split_at(gh);
        // GRU's candidate gate needs Rb apart (it is scaled by rt or added after the
        // product); the other cells add Wb + Rb once, into the input projection.
        let fold_rb = s.cell != Cell::Gru;
        let in_bias: Vec<T> = if fold_rb {
            wb.iter().zip(rb).map(|(&w, &r)| w + r).collect()
        } else {
            wb.to_vec()
        };
        // gx = X Wᵀ + Wb (+ Rb), all steps at once.
        if gh > 0 {
            for row in self.gx.chunks_exact_mut(gh) {
                row.copy_from_slice(&in_bias);
            }
        }
        sgemm::gemm(
            s.seq * batch,
            gh,
            input,
            &mut self.gx,
            gh,
            true,
            MatRef::rows(xv, input),
            if s.w_transposed {
                MatRef::rows(dir.w, gh)
            } else {
                MatRef::transposed(dir.w, input)
            },
            sgemm::threads_for(s.seq * batch, gh, input),
        )?;
        match h0 {
            Some(v) => self.h.copy_from_slice(v),
            None => self.h.fill(T::zero()),
        }
        match c0 {
            Some(v) => self.c.copy_from_slice(v),
            None => self.c.fill(T::zero()),
        }
        let steps = s.lens.iter().copied().max().unwrap_or(0);
        let clip = s.clip.map(T::from_f64);
        let clip = |v: T| clip.map_or(v, |c| clamp(v, -c, c));
        let a = dir.acts;
        let one = T::one();
        let kinds =
            |k: &[ActKind]| a.len() == k.len() && a.iter().zip(k).all(|(x, &y)| x.kind == y);
        // The LSTM every exporter writes: default activations, no clip, no
        // peepholes, separate forget gate; its gates run as whole-slice passes.
        let plain_lstm = s.cell == Cell::Lstm
            && s.clip.is_none()
            && dir.peep.is_none()
            && !s.input_forget
            && kinds(&[ActKind::Sigmoid, ActKind::Tanh, ActKind::Tanh]);
        if plain_lstm && s.lens.iter().all(|&l| l == steps) {
            return self.plain_lstm_uniform(s, dir, steps, y);
        }
        for step in 0..steps {
            // gr = H Rᵀ (+ Rb for GRU) for every batch item at once.
            if gh > 0 && !fold_rb {
                for row in self.gr.chunks_exact_mut(gh) {
                    row.copy_from_slice(rb);
                }
            }
            dir.r
                .gemm_into(batch, hidden, &mut self.gr, !fold_rb, &self.h)?;
            // The time index of item b at this step, while it is still running.
            let time = |b: usize| {
                let len = s.lens[b];
                (step < len).then(|| if dir.reverse { len - 1 - step } else { step })
            };
            if s.cell == Cell::Gru {
                // z and r gates; then (rt ⊙ H) Rhᵀ for every item at once.
                for b in 0..batch {
                    let Some(t) = time(b) else { continue };
                    let gx = &self.gx[(t * batch + b) * gh..(t * batch + b + 1) * gh];
                    let gr = &self.gr[b * gh..(b + 1) * gh];
                    for k in 0..hidden {
                        let hk = b * hidden + k;
                        self.z[hk] = a[0].apply(clip(gx[k] + gr[k]));
                        let rt = a[0].apply(clip(gx[hidden + k] + gr[hidden + k]));
                        // With linear_before_reset rt scales the product; else the input.
                        self.rh[hk] = if s.lbr { rt } else { rt * self.h[hk] };
                    }
                }
                if !s.lbr {
                    let rh = MatRef::transposed(&dir.r.data[2 * hidden * hidden..], hidden);
                    let rh_in = MatRef::rows(&self.rh, hidden);
                    sgemm::gemm(
                        batch,
                        hidden,
                        hidden,
                        &mut self.hn,
                        hidden,
                        false,
                        rh_in,
                        rh,
                        1,
                    )?;
                }
            }
            for b in 0..batch {
                let Some(t) = time(b) else { continue };
                let gx = &self.gx[(t * batch + b) * gh..(t * batch + b + 1) * gh];
                let gr = &self.gr[b * gh..(b + 1) * gh];
                let h = &mut self.h[b * hidden..(b + 1) * hidden];
                match s.cell {
                    Cell::Lstm if plain_lstm => {
                        let c = &mut self.c[b * hidden..(b + 1) * hidden];
                        let g = &mut self.gates;
                        for ((g, &x), &r) in g.iter_mut().zip(gx).zip(gr) {
                            *g = x + r;
                        }
                        // Gates in ONNX order: i, o, f (sigmoid), then c (tanh).
                        let (ifo, cand) = g.split_at_mut(3 * hidden);
                        T::sigmoid_all(ifo);
                        T::tanh_all(cand);
                        let (it, rest) = ifo.split_at(hidden);
                        let (ot, ft) = rest.split_at(hidden);
                        for k in 0..hidden {
                            c[k] = ft[k] * c[k] + it[k] * cand[k];
                        }
                        self.c_act.copy_from_slice(c);
                        T::tanh_all(&mut self.c_act);
                        for k in 0..hidden {
                            h[k] = ot[k] * self.c_act[k];
                        }
                    }
                    Cell::Rnn => {
                        for k in 0..hidden {
                            h[k] = a[0].apply(clip(gx[k] + gr[k]));
                        }
                    }
                    Cell::Lstm => {
                        let c = &mut self.c[b * hidden..(b + 1) * hidden];
                        let peep = |which: usize, k: usize| {
                            dir.peep.map_or(T::zero(), |p| p[which * hidden + k])
                        };
                        for k in 0..hidden {
                            // Gates in ONNX order: i, o, f, c.
                            let pre = |gate: usize| gx[gate * hidden + k] + gr[gate * hidden + k];
                            let it = a[0].apply(clip(pre(0) + peep(0, k) * c[k]));
                            let ft = if s.input_forget {
                                one - it
                            } else {
                                a[0].apply(clip(pre(2) + peep(2, k) * c[k]))
                            };
                            let ct = a[1].apply(clip(pre(3)));
                            let new_c = ft * c[k] + it * ct;
                            let ot = a[0].apply(clip(pre(1) + peep(1, k) * new_c));
                            c[k] = new_c;
                            h[k] = ot * a[2].apply(new_c);
                        }
                    }
                    Cell::Gru => {
                        let hh = 2 * hidden;
                        for k in 0..hidden {
                            let hk = b * hidden + k;
                            let pre = if s.lbr {
                                gx[hh + k] + self.rh[hk] * gr[hh + k]
                            } else {
                                gx[hh + k] + self.hn[hk] + rb[hh + k]
                            };
                            let new_h = a[1].apply(clip(pre));
                            let zt = self.z[hk];
                            h[k] = (one - zt) * new_h + zt * h[k];
                        }
                    }
                }
                let base = ((t * s.dirs + dir.d) * batch + b) * hidden;
                y[base..base + hidden].copy_from_slice(h);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attrs::Attrs;

    /// A seeded generator of `n` values in [-scale/2, scale/2).
    fn values(seed: u64, scale: f64) -> impl FnMut(usize) -> Vec<f64> {
        let mut seed = seed;
        move |n| {
            (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    f64::from(((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5) * scale
                })
                .collect()
        }
    }

    /// R [dirs, 4 * hidden, hidden] as the planner stores it ([`pack_recurrent`]).
    fn transposed_r(r: &[f64], dirs: usize, gh: usize, hidden: usize) -> Vec<f64> {
        let t =
            candle_core::Tensor::from_vec(r.to_vec(), (dirs, gh, hidden), &Device::Cpu).unwrap();
        pack_recurrent(&t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn packed_r_holds_each_panel_of_64_units_row_by_row() {
        for (dirs, hidden) in [(1, 5), (2, 64), (1, 100), (2, 130)] {
            let gh = 4 * hidden;
            let r: Vec<f64> = (0..dirs * gh * hidden).map(|v| v as f64).collect();
            let packed = transposed_r(&r, dirs, gh, hidden);
            assert_eq!(packed.len(), r.len());
            for d in 0..dirs {
                for j in 0..gh {
                    let (g, u) = (j / hidden, j % hidden);
                    let (u0, pw) = (u / 64 * 64, 64.min(hidden - u / 64 * 64));
                    for k in 0..hidden {
                        let at = d * gh * hidden + u0 * 4 * hidden + (k * 4 + g) * pw + u - u0;
                        assert_eq!(
                            packed[at],
                            r[(d * gh + j) * hidden + k],
                            "dirs {dirs} hidden {hidden}: R[{d}, {j}, {k}]"
                        );
                    }
                }
            }
        }
        let not_lstm =
            candle_core::Tensor::zeros((1, 6, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(pack_recurrent(&not_lstm).is_err());
    }

    fn run(cell: Cell, elem: ElemType, lbr: bool) -> Vec<Vec<f64>> {
        run_with(cell, elem, lbr, false)
    }

    /// A bidirectional `cell` over ragged sequences (the general path), with R
    /// as the model stores it or transposed as the planner stores an LSTM's.
    fn run_with(cell: Cell, elem: ElemType, lbr: bool, r_transposed: bool) -> Vec<Vec<f64>> {
        let (seq, batch, input, hidden, dirs) = (4, 3, 5, 6, 2);
        let g = cell.gates();
        let mut rnd = values(3, 1.0);
        let t = |shape: &[usize], v: Vec<f64>| {
            Value::Tensor(Tensor::from_f64_as(elem, shape, v).unwrap())
        };
        let mut attrs = Attrs::default();
        attrs.set(
            "direction",
            crate::ops::Attr::String("bidirectional".into()),
        );
        attrs.set("hidden_size", crate::ops::Attr::Int(hidden as i64));
        attrs.set("linear_before_reset", crate::ops::Attr::Int(i64::from(lbr)));
        attrs.set(R_TRANSPOSED, crate::ops::Attr::Int(i64::from(r_transposed)));
        let info = NodeInfo {
            attrs,
            opset: 14,
            outputs: 3,
        };
        let x = rnd(seq * batch * input);
        let w = rnd(dirs * g * hidden * input);
        let r = rnd(dirs * g * hidden * hidden);
        let r = if r_transposed {
            t(
                &[dirs, hidden, g * hidden],
                transposed_r(&r, dirs, g * hidden, hidden),
            )
        } else {
            t(&[dirs, g * hidden, hidden], r)
        };
        let vals = [
            t(&[seq, batch, input], x),
            t(&[dirs, g * hidden, input], w),
            r,
            t(&[dirs, 2 * g * hidden], rnd(dirs * 2 * g * hidden)),
            Value::Tensor(Tensor::from_i64_as(ElemType::I32, &[batch], vec![4, 0, 2]).unwrap()),
            t(&[dirs, batch, hidden], rnd(dirs * batch * hidden)),
        ];
        let out = recurrent(
            &info,
            &Inputs {
                values: vals.iter().map(Some).collect(),
            },
            cell,
        )
        .unwrap();
        out.iter()
            .map(|v| v.as_tensor().unwrap().to_f64_vec().unwrap())
            .collect()
    }

    /// A bidirectional LSTM with hidden size 96 (big enough for the two-thread
    /// split) and every item running all steps, with zero peepholes or without:
    /// zero peepholes take the general per-value path, none the fused one.
    fn lstm_uniform(batch: usize, zero_peepholes: bool) -> Vec<Vec<f64>> {
        lstm_uniform_with(batch, zero_peepholes, false)
    }

    /// [`lstm_uniform`] with R transposed as the planner stores it, or not.
    fn lstm_uniform_with(batch: usize, zero_peepholes: bool, r_transposed: bool) -> Vec<Vec<f64>> {
        let (seq, input, hidden, dirs) = (3, 5, 96, 2);
        let mut rnd = values(7, 0.6);
        let t = |shape: &[usize], v: Vec<f64>| {
            Value::Tensor(Tensor::from_f64_as(ElemType::F32, shape, v).unwrap())
        };
        let mut attrs = Attrs::default();
        attrs.set(
            "direction",
            crate::ops::Attr::String("bidirectional".into()),
        );
        attrs.set("hidden_size", crate::ops::Attr::Int(hidden as i64));
        attrs.set(R_TRANSPOSED, crate::ops::Attr::Int(i64::from(r_transposed)));
        let info = NodeInfo {
            attrs,
            opset: 14,
            outputs: 3,
        };
        let g = 4 * hidden;
        let x = rnd(seq * batch * input);
        let w = rnd(dirs * g * input);
        let r = rnd(dirs * g * hidden);
        let r = if r_transposed {
            t(&[dirs, hidden, g], transposed_r(&r, dirs, g, hidden))
        } else {
            t(&[dirs, g, hidden], r)
        };
        let mut vals = vec![
            Some(t(&[seq, batch, input], x)),
            Some(t(&[dirs, g, input], w)),
            Some(r),
            Some(t(&[dirs, 2 * g], rnd(dirs * 2 * g))),
            None,
            Some(t(&[dirs, batch, hidden], rnd(dirs * batch * hidden))),
            Some(t(&[dirs, batch, hidden], rnd(dirs * batch * hidden))),
        ];
        if zero_peepholes {
            vals.push(Some(t(&[dirs, 3 * hidden], vec![0.0; dirs * 3 * hidden])));
        }
        let inputs = Inputs {
            values: vals.iter().map(Option::as_ref).collect(),
        };
        let out = recurrent(&info, &inputs, Cell::Lstm).unwrap();
        out.iter()
            .map(|v| v.as_tensor().unwrap().to_f64_vec().unwrap())
            .collect()
    }

    /// Makes a split batch-1 LSTM take its second half back at once, so that
    /// the one-thread fallback of the lockstep runs (other tests only lose the
    /// split while it is set).
    pub(super) static ALONE: AtomicBool = AtomicBool::new(false);

    #[test]
    fn a_split_lstm_run_alone_matches_the_general_path() {
        let want = lstm_uniform(1, true);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        ALONE.store(true, Ordering::Relaxed);
        let got = pool.install(|| lstm_uniform(1, false));
        ALONE.store(false, Ordering::Relaxed);
        for (p, q) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((p - q).abs() < 1e-5, "{p} vs {q}");
        }
    }

    #[test]
    fn fused_lstm_steps_match_the_general_path_on_one_and_two_threads() {
        for batch in [1, 2] {
            let want = lstm_uniform(batch, true);
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let got = pool.install(|| lstm_uniform(batch, false));
                assert_eq!(got.len(), want.len());
                for (p, q) in got.iter().flatten().zip(want.iter().flatten()) {
                    assert!(
                        (p - q).abs() < 1e-5,
                        "batch {batch}, {threads} threads: {p} vs {q}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_lstm_reading_r_transposed_matches_one_reading_it_as_stored() {
        let close = |got: &[Vec<f64>], want: &[Vec<f64>], what: &str| {
            assert_eq!(got.len(), want.len());
            for (p, q) in got.iter().flatten().zip(want.iter().flatten()) {
                assert!((p - q).abs() < 1e-5, "{what}: {p} vs {q}");
            }
        };
        // Every item runs all steps (the fused path): batch 1 at 1 and 2
        // threads (whole steps, then steps split by hidden unit), and batch 2
        // (one product per step for both items).
        for batch in [1, 2] {
            let want = lstm_uniform_with(batch, false, false);
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let got = pool.install(|| lstm_uniform_with(batch, false, true));
                close(&got, &want, &format!("batch {batch}, {threads} threads"));
            }
            // The general path (zero peepholes), R transposed.
            let got = lstm_uniform_with(batch, true, true);
            close(&got, &want, &format!("batch {batch}, general path"));
        }
        // Ragged sequences, f32 and f64.
        for elem in [ElemType::F32, ElemType::F64] {
            let want = run_with(Cell::Lstm, elem, false, false);
            let got = run_with(Cell::Lstm, elem, false, true);
            close(&got, &want, &format!("{elem:?}, ragged"));
        }
    }

    #[test]
    fn only_an_lstm_reads_r_transposed() {
        let mut attrs = Attrs::default();
        attrs.set(R_TRANSPOSED, crate::ops::Attr::Int(1));
        attrs.set("hidden_size", crate::ops::Attr::Int(2));
        let info = NodeInfo {
            attrs,
            opset: 14,
            outputs: 1,
        };
        let t = |shape: &[usize]| {
            let n = shape.iter().product();
            Value::Tensor(Tensor::from_f64_as(ElemType::F32, shape, vec![0.1; n]).unwrap())
        };
        let vals = [t(&[1, 1, 2]), t(&[1, 6, 2]), t(&[1, 2, 6])];
        let inputs = Inputs {
            values: vals.iter().map(Some).collect(),
        };
        let err = recurrent(&info, &inputs, Cell::Gru).unwrap_err();
        assert!(err.to_string().contains("only an LSTM"), "{err}");
    }

    #[test]
    fn f32_and_f64_recurrences_agree_with_ragged_sequence_lengths() {
        for (cell, lbr) in [
            (Cell::Lstm, false),
            (Cell::Gru, false),
            (Cell::Gru, true),
            (Cell::Rnn, false),
        ] {
            let (a, b) = (run(cell, ElemType::F32, lbr), run(cell, ElemType::F64, lbr));
            for (p, q) in a.iter().flatten().zip(b.iter().flatten()) {
                assert!((p - q).abs() < 1e-5, "{cell:?} lbr={lbr}: {p} vs {q}");
            }
            // Item 1 has no steps: its Y rows are zero.
            let hidden = 6;
            for t in 0..4 {
                for d in 0..2 {
                    let base = ((t * 2 + d) * 3 + 1) * hidden;
                    assert!(a[0][base..base + hidden].iter().all(|&v| v == 0.0));
                }
            }
        }
    }
}
