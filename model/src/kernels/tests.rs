//! Every kernel against libtorch, on random and on bloom-560m's shapes, in every instruction set this
//! CPU has.

#![allow(clippy::unwrap_used)]

use tch::{Kind, Tensor};

use super::*;

fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Portable];
    let best = detect();
    if matches!(best, Isa::Avx2 | Isa::Avx512 | Isa::Avx512Dot) {
        v.push(Isa::Avx2);
    }
    if matches!(best, Isa::Avx512 | Isa::Avx512Dot) {
        v.push(Isa::Avx512);
    }
    if best == Isa::Avx512Dot {
        v.push(Isa::Avx512Dot);
    }
    v
}

/// The activations as the instruction set sees them: the dot-product kernels round them (bf16) or
/// quantize them per group (int8) first.
fn as_seen(isa: Isa, x: &[f32], tokens: usize, w: &Matrix) -> Vec<f32> {
    if !quantizes(isa, w) {
        return x.to_vec();
    }
    match avx512_dot::prepare(x, tokens, w) {
        Some(avx512_dot::Prepared::Bf16(b)) => b
            .iter()
            .map(|h| f32::from_bits(u32::from(*h) << 16))
            .collect(),
        Some(avx512_dot::Prepared::Int8 { xq, scales, .. }) => xq
            .iter()
            .enumerate()
            .map(|(i, q)| f32::from(*q) * scales[i / w.group()])
            .collect(),
        None => x.to_vec(),
    }
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

/// `x · Wᵀ + b` by libtorch over the matrix as the kernels see it (dequantized).
fn reference(x: &[f32], tokens: usize, w: &Matrix, b: &Tensor) -> Vec<f32> {
    let x = Tensor::from_slice(x).view([tokens as i64, w.cols() as i64]);
    to_vec(&(x.matmul(&w.to_f32().tr()) + b))
}

fn check(rows: usize, cols: usize, tokens: usize, seed: i64) {
    tch::manual_seed(seed);
    let pool = pool(2);
    let w = Tensor::randn([rows as i64, cols as i64], (Kind::Float, tch::Device::Cpu)) * 0.05;
    let x = Tensor::randn(
        [tokens as i64, cols as i64],
        (Kind::Float, tch::Device::Cpu),
    );
    let b = Tensor::randn([rows as i64], (Kind::Float, tch::Device::Cpu));
    let (xs, bs) = (to_vec(&x), to_vec(&b));
    for m in [
        Matrix::f32(&w).unwrap(),
        Matrix::bf16(&w).unwrap(),
        Matrix::int8(&w).unwrap(),
    ] {
        for isa in isas() {
            let want = reference(&as_seen(isa, &xs, tokens, &m), tokens, &m, &b);
            let mut y = vec![0f32; tokens * rows];
            matmul_isa(isa, &pool, &xs, tokens, &m, Some(&bs), &mut y);
            let worst = y
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-4,
                "{} {rows}×{cols}, {tokens} tokens, {}: relative error {worst}",
                m.dtype(),
                isa.name()
            );
        }
    }
}

#[test]
fn products_match_libtorch_on_random_shapes() {
    for (i, (rows, cols, tokens)) in [
        (1, 16, 1),
        (5, 48, 3),
        (17, 40, 2),
        (67, 64, 7),
        (130, 128, 9),
        (3, 256, 16),
    ]
    .into_iter()
    .enumerate()
    {
        check(rows, cols, tokens, i as i64);
    }
}

#[test]
fn products_match_libtorch_on_bloom_560m_shapes() {
    // query_key_value, dense, dense_h_to_4h, dense_4h_to_h, and a slice of the lm_head.
    for (i, (rows, cols, tokens)) in [
        (3072, 1024, 1),
        (1024, 1024, 5),
        (4096, 1024, 16),
        (1024, 4096, 4),
        (2048, 1024, 13),
    ]
    .into_iter()
    .enumerate()
    {
        check(rows, cols, tokens, 100 + i as i64);
    }
}

#[test]
fn int8_stays_within_half_a_step_of_each_group() {
    tch::manual_seed(7);
    let w = Tensor::randn([33, 256], (Kind::Float, tch::Device::Cpu));
    let m = Matrix::int8(&w).unwrap();
    let err = (m.to_f32() - &w).abs();
    let g = INT8_GROUP as i64;
    let scale = w.abs().view([33, 256 / g, g]).amax(2, true) / 127.0;
    let ratio = (err.view([33, 256 / g, g]) / scale).max().double_value(&[]);
    // Half a step of the stored scale, which is the exact one rounded to a half (11 bits).
    assert!(ratio <= 0.5 * (1.0 + 1.0 / 2048.0) + 1e-4, "{ratio}");
    let mut row = vec![0f32; 256];
    m.row_f32(5, &mut row);
    assert_eq!(row, to_vec(&m.to_f32().get(5)));
}

#[test]
fn int8_refuses_weights_beyond_its_half_scales() {
    let mut w = vec![0.01f32; 64];
    w[3] = 9_000.0;
    let t = Tensor::from_slice(&w).view([2, 32]);
    assert!(matches!(Matrix::int8(&t), Err(MatrixError::Range(_))));
    // A group of tiny weights (absmax 1e-4, a scale below the half's range unshifted) round-trips.
    let t = Tensor::from_slice(&[1e-4f32; 32]).view([1, 32]);
    let mut row = vec![0f32; 32];
    Matrix::int8(&t).unwrap().row_f32(0, &mut row);
    assert!(row.iter().all(|v| (v - 1e-4).abs() < 1e-7), "{row:?}");
}

#[test]
fn decode_attention_matches_libtorch_across_segments() {
    tch::manual_seed(3);
    // The prefix spans two tiles of transposed keys, the second partial.
    let (n_head, hd, prefix, own) = (6usize, 16usize, 70usize, 4usize);
    let width = n_head * hd;
    let q = Tensor::randn([width as i64], (Kind::Float, tch::Device::Cpu));
    let k = Tensor::randn(
        [(prefix + own) as i64, width as i64],
        (Kind::Float, tch::Device::Cpu),
    );
    let v = Tensor::randn(
        [(prefix + own) as i64, width as i64],
        (Kind::Float, tch::Device::Cpu),
    );
    let slopes: Vec<f32> = crate::bloom::alibi_slopes(n_head)
        .into_iter()
        .map(|s| s as f32)
        .collect();
    // libtorch, as the model's prefill does it.
    let total = (prefix + own) as i64;
    let qh = q.view([n_head as i64, 1, hd as i64]);
    let kh = k.view([total, n_head as i64, hd as i64]).transpose(0, 1);
    let vh = v.view([total, n_head as i64, hd as i64]).transpose(0, 1);
    let alibi = Tensor::from_slice(&slopes).view([n_head as i64, 1, 1])
        * Tensor::arange(total, (Kind::Float, tch::Device::Cpu)).view([1, 1, total]);
    let scores = alibi.baddbmm(&qh, &kh.transpose(1, 2), 1.0, 1.0 / (hd as f64).sqrt());
    let want = to_vec(&scores.softmax(-1, Kind::Float).bmm(&vh));
    let (ks, vs) = (to_vec(&k), to_vec(&v));
    let split = prefix * width;
    // The prefix as rows, and laid out per head as a shared system prompt's is.
    let stride = prefix.div_ceil(KEY_TILE) * KEY_TILE;
    let mut kt = vec![0f32; width * stride];
    transpose_keys(&ks[..split], prefix, (width, hd), stride, &mut kt);
    let mut vh = vec![0f32; split];
    values_per_head(&vs[..split], prefix, (width, hd), &mut vh);
    let per_head = Values::PerHead {
        v: &vh,
        positions: prefix,
    };
    // And rounded to bf16, as bf16 and int8 models keep it where the CPU multiplies bf16 pairs:
    // within bf16's precision of libtorch's f32.
    let mut ktb = vec![0u16; width * stride];
    transpose_keys_bf16(&ks[..split], prefix, (width, hd), stride, &mut ktb);
    let mut vhb = vec![0u16; paired(prefix) * width];
    values_per_head_bf16(&vs[..split], prefix, (width, hd), &mut vhb);
    let bf16 = Values::PerHeadBf16 {
        v: &vhb,
        positions: prefix,
    };
    for (prefix_keys, prefix_values, tolerance) in [
        (Keys::Rows(&ks[..split]), Values::Rows(&vs[..split]), 1e-5),
        (Keys::Transposed { kt: &kt, stride }, per_head, 1e-5),
        (
            Keys::TransposedBf16 {
                kt: &ktb,
                stride,
                norms: &key_norms_bf16(&ktb, hd, stride),
            },
            bf16,
            1e-2,
        ),
    ] {
        let segments = [
            KvSegment {
                k: prefix_keys,
                v: prefix_values,
                len: prefix,
            },
            KvSegment {
                k: Keys::Rows(&ks[split..]),
                v: Values::Rows(&vs[split..]),
                len: own,
            },
        ];
        let mut out = vec![0f32; width];
        decode_attention(
            &AttentionInput {
                q: &to_vec(&q),
                segments: &segments,
                slopes: &slopes,
                head_dim: hd,
            },
            &mut out,
            &mut Vec::new(),
        );
        let worst = out
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < tolerance, "{prefix_keys:?}: {worst}");
    }
}

/// Attention of `n` queries over a bf16 prefix (keys laid out with `norms`) and `n` own positions:
/// the prompt chunk's, then each query's as a decoding token.
fn over_bf16_prefix(
    (q, own_k, own_v): (&[f32], &[f32], &[f32]),
    (kt, vh, stride, prefix): (&[u16], &[u16], usize, usize),
    norms: &[f32],
    slopes: &[f32],
    (n, hd): (usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    let width = slopes.len() * hd;
    let prefix_segment = KvSegment {
        k: Keys::TransposedBf16 { kt, stride, norms },
        v: Values::PerHeadBf16 {
            v: vh,
            positions: prefix,
        },
        len: prefix,
    };
    let segments = [
        prefix_segment,
        KvSegment {
            k: Keys::Rows(own_k),
            v: Values::Rows(own_v),
            len: n,
        },
    ];
    let mut chunk = vec![0f32; n * width];
    prefill_attention_heads(q, &segments, n, slopes, 0..slopes.len(), hd, &mut chunk);
    let mut decoded = vec![0f32; n * width];
    for (j, out) in decoded.chunks_exact_mut(width).enumerate() {
        let segs = [
            prefix_segment,
            KvSegment {
                len: j + 1,
                ..segments[1]
            },
        ];
        let input = AttentionInput {
            q: &q[j * width..(j + 1) * width],
            segments: &segs,
            slopes,
            head_dim: hd,
        };
        decode_attention(&input, out, &mut Vec::new());
    }
    (chunk, decoded)
}

fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    far_keys::largest(a.iter().zip(b).map(|(x, y)| (x - y).abs()))
}

#[test]
fn keys_alibi_silences_are_left_out_without_changing_the_attention() {
    // bloom-560m's heads over a 700-token bf16 prefix, 5 queries after it; values of attention's
    // usual size.
    let (nh, hd, prefix, n) = (16usize, 64usize, 700usize, 5usize);
    let width = nh * hd;
    let val = |i: usize, scale: f32| (((i * 7919) % 1000) as f32 / 500.0 - 1.0) * scale;
    let q: Vec<f32> = (0..n * width).map(|i| val(i + 5, 1.0)).collect();
    let (mut pk, mut pv): (Vec<f32>, Vec<f32>) = (0..prefix * width)
        .map(|i| (val(i, 0.1), val(i + 7, 0.1)))
        .unzip();
    let (own_k, own_v): (Vec<f32>, Vec<f32>) = (0..n * width)
        .map(|i| (val(i + 3, 0.1), val(i + 11, 0.1)))
        .unzip();
    let slopes: Vec<f32> = crate::bloom::alibi_slopes(nh)
        .into_iter()
        .map(|s| s as f32)
        .collect();
    // Head 0's first 128 keys point along every query's head 0 so far that they outweigh ALiBi
    // (a score of slope × 700 + 20), with values of 3 where the rest are at most 0.1: leaving
    // them out would change head 0's output by about 3.
    let q0: Vec<f32> = (0..hd)
        .map(|d| (0..n).map(|t| q[t * width + d]).sum::<f32>() / n as f32)
        .collect();
    let q0_sq: f32 = q0.iter().map(|x| x * x).sum();
    let c = (slopes[0] * prefix as f32 + 20.0) * (hd as f32).sqrt() / q0_sq;
    for j in 0..128 {
        for d in 0..hd {
            pk[j * width + d] = c * q0[d];
            pv[j * width + d] = 3.0;
        }
    }
    let stride = prefix.next_multiple_of(KEY_TILE);
    let mut kt = vec![0u16; width * stride];
    transpose_keys_bf16(&pk, prefix, (width, hd), stride, &mut kt);
    let mut vh = vec![0u16; paired(prefix) * width];
    values_per_head_bf16(&pv, prefix, (width, hd), &mut vh);
    let norms = key_norms_bf16(&kt, hd, stride);
    let tiles = stride / KEY_TILE;
    let run = |norms: &[f32]| {
        over_bf16_prefix(
            (&q, &own_k, &own_v),
            (&kt, &vh, stride, prefix),
            norms,
            &slopes,
            (n, hd),
        )
    };
    // Every key, against far keys left out by the norms: the same within f32's rounding.
    let every_key = vec![f32::INFINITY; norms.len()];
    let (chunk_all, decoded_all) = run(&every_key);
    let (chunk, decoded) = run(&norms);
    assert!(largest_difference(&chunk, &chunk_all) < 1e-6);
    assert!(largest_difference(&decoded, &decoded_all) < 1e-6);
    // And the steep heads did leave keys out (else the check above could not fail): head 1 all
    // but its last few tiles; head 0 none, its first tiles' norms forbid it.
    let q_norm = |h: usize| {
        (0..n)
            .map(|t| far_keys::norm(&q[t * width + h * hd..t * width + (h + 1) * hd]) / 8.0)
            .fold(0f32, f32::max)
    };
    let silent =
        |h: usize| far_keys::silent_tiles(&norms[h * tiles..], prefix, slopes[h], q_norm(h));
    assert_eq!(silent(0), 0);
    assert!(silent(1) >= 8, "{}", silent(1));
    // Norms that lie (head 0's first tiles claimed empty) leave out the keys that carry head 0:
    // the answer changes, so the comparison above would catch a bound that ignored the norms.
    let mut lying = norms.clone();
    lying[..2].fill(0.0);
    assert!(far_keys::silent_tiles(&lying[..tiles], prefix, slopes[0], q_norm(0)) >= 2);
    let (chunk_lied, decoded_lied) = run(&lying);
    assert!(largest_difference(&chunk_lied, &chunk_all) > 1.0);
    assert!(largest_difference(&decoded_lied, &decoded_all) > 1.0);
}
