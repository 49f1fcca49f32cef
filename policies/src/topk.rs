//! Top-k by magnitude over activations, fast: the trace stores f16, whose magnitude order is the
//! order of its 15 low bits, so selection is a two-pass radix select over `u16` keys.

/// f16 magnitude key of each value (sign bit cleared).
pub fn keys_of(values: &[f32], out: &mut Vec<u16>) {
    out.clear();
    out.extend(
        values
            .iter()
            .map(|&v| half::f16::from_f32(v.abs()).to_bits() & 0x7fff),
    );
}

/// Histogram of the high bytes of a key vector, kept as four partial counts: neighbouring keys
/// often share a bin, and one histogram would make each increment wait for the last.
struct HighHist([[u32; 256]; 4]);

impl HighHist {
    /// Counts the keys of `keys`.
    fn of(keys: &[u16]) -> Self {
        let mut h = HighHist([[0; 256]; 4]);
        let quads = keys.chunks_exact(4);
        for &x in quads.remainder() {
            h.0[0][(x >> 8) as usize] += 1;
        }
        for q in quads {
            for (part, &x) in h.0.iter_mut().zip(q) {
                part[(x >> 8) as usize] += 1;
            }
        }
        h
    }

    fn total(&self, bin: usize) -> u32 {
        self.0[0][bin] + self.0[1][bin] + self.0[2][bin] + self.0[3][bin]
    }
}

/// Bit j set when `lo <= block[j] <= hi`, for a block of at most 64 keys below 0x8000 (f16
/// magnitudes). Built with AVX2 where the build has it (16 compares per instruction, a byte
/// mask per 32 keys), else one key at a time; the same bits either way.
#[inline(always)]
fn range_mask64(block: &[u16], lo: u16, hi: u16) -> u64 {
    debug_assert!(block.len() <= 64 && lo < 0x8000 && hi < 0x8000);
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if block.len() == 64 {
        // SAFETY: the build enables AVX2 (checked by the cfg above), and the four unaligned
        // 32-byte loads read exactly the 64 keys of `block`.
        unsafe {
            use std::arch::x86_64::*;
            let (lo_v, hi_v) = (_mm256_set1_epi16(lo as i16), _mm256_set1_epi16(hi as i16));
            let p = block.as_ptr() as *const __m256i;
            // Keys and bounds are below 0x8000, so signed compares order them right: a key is
            // outside when lo > x or x > hi.
            let inside = |i: usize| {
                let x = _mm256_loadu_si256(p.add(i));
                let out = _mm256_or_si256(_mm256_cmpgt_epi16(lo_v, x), _mm256_cmpgt_epi16(x, hi_v));
                _mm256_xor_si256(out, _mm256_set1_epi16(-1))
            };
            let bits32 = |a: __m256i, b: __m256i| {
                // packs interleaves the 128-bit halves: a0-7 b0-7 | a8-15 b8-15; put them back.
                let packed = _mm256_permute4x64_epi64(_mm256_packs_epi16(a, b), 0b11_01_10_00);
                _mm256_movemask_epi8(packed) as u32 as u64
            };
            return bits32(inside(0), inside(1)) | bits32(inside(2), inside(3)) << 32;
        }
    }
    let mut bits = 0u64;
    for (j, &x) in block.iter().enumerate() {
        bits |= ((lo <= x && x <= hi) as u64) << j;
    }
    bits
}

/// How many keys lie in `lo ..= hi`.
fn count_range(keys: &[u16], lo: u16, hi: u16) -> usize {
    keys.chunks(64)
        .map(|b| range_mask64(b, lo, hi).count_ones() as usize)
        .sum()
}

/// Appends the indices (offset by `base`) of the set bits of `bits`, lowest first.
#[inline(always)]
fn push_bits(mut bits: u64, base: u32, out: &mut Vec<u32>) {
    while bits != 0 {
        out.push(base + bits.trailing_zeros());
        bits &= bits - 1;
    }
}

/// Appends the indices of the keys in `lo ..= hi`, ascending.
pub fn indices_in_range(keys: &[u16], lo: u16, hi: u16, out: &mut Vec<u32>) {
    for (b, block) in keys.chunks(64).enumerate() {
        push_bits(range_mask64(block, lo, hi), (b * 64) as u32, out);
    }
}

/// Indices of the `k` largest keys (f16 magnitudes, below 0x8000), ties to the lower index;
/// sorted ascending.
pub fn top_k(keys: &[u16], k: usize, out: &mut Vec<u32>) {
    out.clear();
    if k == 0 || k >= keys.len() {
        out.extend(0..k.min(keys.len()) as u32);
        return;
    }
    // From the top, the high byte holding the k-th largest key.
    let hist = HighHist::of(keys);
    let mut above = 0u32;
    let mut hi = 255usize;
    loop {
        let h = hist.total(hi);
        if above + h >= k as u32 {
            break;
        }
        above += h;
        hi -= 1;
    }
    finish_top_k(keys, 0x7fff, hi, above as usize, k, out);
}

/// Indices of the `k` largest keys below `limit` (ties to the lower index; sorted ascending),
/// for a small `k`: the high bytes are counted from `limit` down until the `k`-th key's is
/// found. At most as many keys below `limit` as there are are returned.
pub fn top_k_under(keys: &[u16], limit: u16, k: usize, out: &mut Vec<u32>) {
    out.clear();
    if k == 0 || limit == 0 {
        return;
    }
    let max_key = limit - 1;
    let mut above = 0usize;
    let mut hi = (max_key >> 8) as usize;
    loop {
        let c = count_range(
            keys,
            (hi as u16) << 8,
            max_key.min(((hi as u16) << 8) | 0xff),
        );
        if above + c >= k {
            break;
        }
        above += c;
        if hi == 0 {
            // Fewer than `k` keys below `limit`: all of them.
            indices_in_range(keys, 0, max_key, out);
            return;
        }
        hi -= 1;
    }
    finish_top_k(keys, max_key, hi, above, k, out);
}

/// The end of a top-k over the keys up to `max_key` once the high byte `hi` of the `k`-th
/// largest is known (`above` keys lie in higher bytes): the low byte from a histogram of that
/// high byte's keys, then every key above the threshold and the first `k - above` at it (ties to
/// the lower index), 64 keys at a time as bit masks.
fn finish_top_k(
    keys: &[u16],
    max_key: u16,
    hi: usize,
    mut above: usize,
    k: usize,
    out: &mut Vec<u32>,
) {
    let bin = ((hi as u16) << 8, max_key.min(((hi as u16) << 8) | 0xff));
    let mut lo_hist = [0u32; 256];
    for block in keys.chunks(64) {
        let mut bits = range_mask64(block, bin.0, bin.1);
        while bits != 0 {
            lo_hist[(block[bits.trailing_zeros() as usize] & 0xff) as usize] += 1;
            bits &= bits - 1;
        }
    }
    let mut lo = 255usize;
    while above + (lo_hist[lo] as usize) < k {
        above += lo_hist[lo] as usize;
        lo -= 1;
    }
    let threshold = ((hi as u16) << 8) | lo as u16;
    out.reserve(k);
    let mut ties = k - above;
    for (b, block) in keys.chunks(64).enumerate() {
        let mut bits = if threshold < max_key {
            range_mask64(block, threshold + 1, max_key)
        } else {
            0
        };
        let mut eq = range_mask64(block, threshold, threshold);
        if ties > 0 && eq != 0 {
            let n = eq.count_ones() as usize;
            if n > ties {
                // Keep the lowest `ties` set bits.
                for _ in 0..n - ties {
                    eq &= !(1u64 << (63 - eq.leading_zeros()));
                }
            }
            ties -= eq.count_ones() as usize;
            bits |= eq;
        }
        push_bits(bits, (b * 64) as u32, out);
    }
    debug_assert_eq!(out.len(), k);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_matches_a_sort() {
        let vals: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1009) as f32 * if i % 3 == 0 { -0.01 } else { 0.013 })
            .collect();
        let mut keys = Vec::new();
        keys_of(&vals, &mut keys);
        for k in [0, 1, 10, 333, 999, 1000, 2000] {
            let mut got = Vec::new();
            top_k(&keys, k, &mut got);
            let mut idx: Vec<u32> = (0..1000).collect();
            idx.sort_by_key(|&i| (std::cmp::Reverse(keys[i as usize]), i));
            let mut want: Vec<u32> = idx[..k.min(1000)].to_vec();
            want.sort();
            assert_eq!(got, want, "k = {k}");
        }
    }

    #[test]
    fn range_masks_match_the_definition_at_the_edges() {
        let block: Vec<u16> = (0..64u32)
            .map(|j| {
                [0u16, 1, 0x7bff, 0x7c00, 0x7c01, 0x7fff, 0x3c00, 0x3bff][(j * 5 % 8) as usize]
            })
            .collect();
        for (lo, hi) in [
            (0, 0x7fff),
            (0, 0),
            (1, 0x7c00),
            (0x7c01, 0x7c00),
            (0x7c00, 0x7c00),
            (0x3bff, 0x3c00),
            (0x7fff, 0x7fff),
        ] {
            let want = block
                .iter()
                .enumerate()
                .fold(0u64, |m, (j, &x)| m | (((lo <= x && x <= hi) as u64) << j));
            assert_eq!(range_mask64(&block, lo, hi), want, "{lo:#x}..={hi:#x}");
            assert_eq!(range_mask64(&block[..10], lo, hi), want & 0x3ff);
        }
    }

    #[test]
    fn top_k_under_a_limit_matches_a_sort() {
        let mut next = crate::testing::xorshift(12345);
        for case in 0..200 {
            let n = 1 + case * 7 % 300;
            let spread = [3u64, 40, 0x4000][case % 3];
            let keys: Vec<u16> = (0..n)
                .map(|_| (next() % spread) as u16 + if case % 5 == 0 { 0x3000 } else { 0 })
                .collect();
            let limit = keys[case % n].saturating_add((case % 4) as u16);
            let mut idx: Vec<u32> = (0..n as u32)
                .filter(|&i| keys[i as usize] < limit)
                .collect();
            idx.sort_by_key(|&i| (std::cmp::Reverse(keys[i as usize]), i));
            for k in [0, 1, 2, 5, n / 3, n, n + 3] {
                let mut want: Vec<u32> = idx[..k.min(idx.len())].to_vec();
                want.sort();
                let mut got = Vec::new();
                top_k_under(&keys, limit, k, &mut got);
                assert_eq!(got, want, "case {case} k {k} limit {limit:#x}");
            }
        }
    }

    #[test]
    fn heavy_ties_go_to_the_lower_index() {
        // Seven distinct keys over 1001 channels, spread over two high bytes.
        let keys: Vec<u16> = (0..1001u32)
            .map(|i| [0u16, 3, 0x100, 0x1ff, 0x200, 0x7bff, 0x3c00][(i * 31 % 7) as usize])
            .collect();
        let mut idx: Vec<u32> = (0..1001).collect();
        idx.sort_by_key(|&i| (std::cmp::Reverse(keys[i as usize]), i));
        for k in [1, 2, 142, 143, 144, 500, 857, 858, 1000] {
            let mut want: Vec<u32> = idx[..k].to_vec();
            want.sort();
            let mut got = Vec::new();
            top_k(&keys, k, &mut got);
            assert_eq!(got, want, "k = {k}");
        }
    }
}
