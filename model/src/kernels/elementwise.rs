//! The cheap steps between the products: layer norm, BLOOM's GELU, residual adds. Written so the
//! compiler vectorizes them (independent partial sums, no library calls inside loops) and compiled
//! once per instruction set; a libtorch call per step would cost more in dispatch than the work.

use super::{isa, Isa};

/// Lanes of the partial sums: one AVX-512 register.
const LANES: usize = 16;

#[inline(always)]
pub(super) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[inline(always)]
fn squared_deviation(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += (v - mean) * (v - mean);
        }
    }
    acc.iter().sum::<f32>()
        + chunks
            .remainder()
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum::<f32>()
}

#[inline(always)]
fn layer_norm_impl(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    for (row, o) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        // Two passes, as libtorch: the mean, then the variance about it (biased).
        let mean = sum(row) / width as f32;
        let var = squared_deviation(row, mean) / width as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, v), w), b) in o.iter_mut().zip(row).zip(weight).zip(bias) {
            *o = (v - mean) * inv * w + b;
        }
    }
}

/// `e^v`: range reduction to `2^n · e^r` with `|r| ≤ ln 2 / 2` and a degree-6 polynomial (relative
/// error below 2e-7); saturates to 0 and to `e^88` outside the f32 range.
#[inline(always)]
pub(super) fn exp(v: f32) -> f32 {
    exp_with::<false>(v)
}

/// [`exp`], its polynomial in fused multiply-adds when `FMA` (only where the CPU has them: elsewhere
/// `mul_add` is a library call): half the operations on the chain, which the softmax of a long
/// prompt waits on.
#[inline(always)]
pub(super) fn exp_with<const FMA: bool>(v: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const C: [f32; 7] = [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    let v = v.clamp(-87.0, 88.0);
    let n = super::round_small(v * std::f32::consts::LOG2_E);
    let p = if FMA {
        let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, v));
        C[1..].iter().fold(C[0], |p, c| p.mul_add(r, *c))
    } else {
        let r = v - n * LN2_HI - n * LN2_LO;
        C[1..].iter().fold(C[0], |p, c| p * r + c)
    };
    // 2^n from n's bits: n + 127 sits in the low mantissa bits of n + 127 + 2^23, and the shift moves
    // it into the exponent (no float-to-int conversion, which would not vectorize).
    p * f32::from_bits((n + 127.0 + 8_388_608.0).to_bits() << 23)
}

#[inline(always)]
fn gelu_impl(x: &mut [f32]) {
    // BLOOM's tanh approximation; tanh(u) = 1 - 2 / (e^{2u} + 1).
    const C: f32 = 0.797_884_6;
    for v in x.iter_mut() {
        let u = C * *v * (1.0 + 0.044_715 * *v * *v);
        let tanh = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
        *v = 0.5 * *v * (1.0 + tanh);
    }
}

#[inline(always)]
fn add_impl(acc: &mut [f32], x: &[f32]) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

macro_rules! dispatch {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) => $imp:ident) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,fma")]
                unsafe fn wide($($arg: $ty),*) {
                    $imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn narrow($($arg: $ty),*) {
                    $imp($($arg),*)
                }
                match isa() {
                    // SAFETY: `isa()` names only instruction sets this CPU has.
                    Isa::Avx512Dot | Isa::Avx512 => return unsafe { wide($($arg),*) },
                    Isa::Avx2 => return unsafe { narrow($($arg),*) },
                    Isa::Portable => {}
                }
            }
            $imp($($arg),*)
        }
    };
}

dispatch! {
    /// Layer norm of each row of `x` (rows as wide as `weight`) into `out`.
    pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) => layer_norm_impl
}

dispatch! {
    /// BLOOM's GELU (tanh approximation), in place.
    pub fn gelu(x: &mut [f32]) => gelu_impl
}

dispatch! {
    /// `acc += x`, element by element.
    pub fn add(acc: &mut [f32], x: &[f32]) => add_impl
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tch::{Kind, Tensor};

    fn to_vec(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn layer_norm_and_gelu_match_libtorch() {
        tch::manual_seed(11);
        let width = 100;
        let x = Tensor::randn([3, width], (Kind::Float, tch::Device::Cpu)) * 3.0 + 1.5;
        let w = Tensor::randn([width], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::randn([width], (Kind::Float, tch::Device::Cpu));
        let want = to_vec(&x.layer_norm([width], Some(&w), Some(&b), 1e-5, false));
        let mut got = vec![0f32; 3 * width as usize];
        super::layer_norm(&to_vec(&x), &to_vec(&w), &to_vec(&b), 1e-5, &mut got);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "layer norm: {worst}");

        // GELU over a wide range, including where tanh saturates.
        let x = Tensor::linspace(-30.0, 30.0, 4001, (Kind::Float, tch::Device::Cpu));
        let want = to_vec(&x.gelu("tanh"));
        let mut got = to_vec(&x);
        super::gelu(&mut got);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "gelu: {worst}");
    }

    #[test]
    fn exp_is_accurate_and_saturates() {
        for i in -870..=880 {
            let v = i as f32 / 10.0;
            let want = v.exp();
            // `mul_add` is exact wherever it runs, so the fused form is checked on any CPU.
            for got in [super::exp(v), super::exp_with::<true>(v)] {
                assert!(
                    (got - want).abs() <= want * 3e-7 + f32::MIN_POSITIVE,
                    "{v}: {got} vs {want}"
                );
            }
        }
        assert_eq!(super::exp(-1000.0), super::exp(-87.0));
        assert!(super::exp(1000.0).is_finite());
    }
}
