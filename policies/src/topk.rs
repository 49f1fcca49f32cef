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
#[derive(Clone)]
pub struct HighHist([[u32; 256]; 4]);

impl Default for HighHist {
    fn default() -> Self {
        HighHist([[0; 256]; 4])
    }
}

impl HighHist {
    /// Counts the keys of `keys`.
    pub fn of(keys: &[u16]) -> Self {
        let mut h = HighHist::default();
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

    /// Counts `key`, the `i`-th of the vector (a caller filling the keys in one pass).
    #[inline(always)]
    pub fn add(&mut self, i: usize, key: u16) {
        self.0[i & 3][(key >> 8) as usize] += 1;
    }

    fn total(&self, bin: usize) -> u32 {
        self.0[0][bin] + self.0[1][bin] + self.0[2][bin] + self.0[3][bin]
    }
}

/// Indices of the `k` largest keys, ties to the lower index; sorted ascending.
pub fn top_k(keys: &[u16], k: usize, out: &mut Vec<u32>) {
    if k == 0 || k >= keys.len() {
        out.clear();
        out.extend(0..k.min(keys.len()) as u32);
        return;
    }
    top_k_with(keys, &HighHist::of(keys), k, out)
}

/// [`top_k`] given the keys' [`HighHist`].
pub fn top_k_with(keys: &[u16], hist: &HighHist, k: usize, out: &mut Vec<u32>) {
    out.clear();
    let n = keys.len();
    if k >= n {
        out.extend(0..n as u32);
        return;
    }
    if k == 0 {
        return;
    }
    // From the top, the high byte holding the k-th largest key.
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
    let mut lo_hist = [0u32; 256];
    for &x in keys {
        if (x >> 8) as usize == hi {
            lo_hist[(x & 0xff) as usize] += 1;
        }
    }
    let mut lo = 255usize;
    loop {
        if above + lo_hist[lo] >= k as u32 {
            break;
        }
        above += lo_hist[lo];
        lo -= 1;
    }
    let threshold = ((hi as u16) << 8) | lo as u16;
    // Every key above the threshold and the first `k - above` at it, branch-free (with half the
    // channels kept, a branch per channel would mispredict half the time); one slot past the
    // end takes the writes of the channels not kept.
    out.resize(k + 1, 0);
    let mut len = 0usize;
    let mut ties = k as u32 - above;
    for (i, &x) in keys.iter().enumerate() {
        out[len] = i as u32;
        let tie = x == threshold;
        let take = (x > threshold) | (tie & (ties > 0));
        ties -= (tie & take) as u32;
        len += take as usize;
    }
    out.truncate(len);
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
    fn heavy_ties_go_to_the_lower_index_and_a_filled_histogram_agrees() {
        // Seven distinct keys over 1001 channels, spread over two high bytes.
        let keys: Vec<u16> = (0..1001u32)
            .map(|i| [0u16, 3, 0x100, 0x1ff, 0x200, 0x7bff, 0x3c00][(i * 31 % 7) as usize])
            .collect();
        let mut filled = HighHist::default();
        for (i, &x) in keys.iter().enumerate() {
            filled.add(i, x);
        }
        let mut idx: Vec<u32> = (0..1001).collect();
        idx.sort_by_key(|&i| (std::cmp::Reverse(keys[i as usize]), i));
        for k in [1, 2, 142, 143, 144, 500, 857, 858, 1000] {
            let mut want: Vec<u32> = idx[..k].to_vec();
            want.sort();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            top_k(&keys, k, &mut a);
            top_k_with(&keys, &filled, k, &mut b);
            assert_eq!(a, want, "k = {k}");
            assert_eq!(b, want, "k = {k}");
        }
    }
}
