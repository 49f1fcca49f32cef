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

/// Indices of the `k` largest keys, ties to the lower index; sorted ascending.
pub fn top_k(keys: &[u16], k: usize, out: &mut Vec<u32>) {
    out.clear();
    let n = keys.len();
    if k >= n {
        out.extend(0..n as u32);
        return;
    }
    if k == 0 {
        return;
    }
    // Histogram of the high byte, from the top, to find the byte holding the k-th largest.
    let mut hist = [0u32; 256];
    for &x in keys {
        hist[(x >> 8) as usize] += 1;
    }
    let mut above = 0u32;
    let mut hi = 255usize;
    loop {
        if above + hist[hi] >= k as u32 {
            break;
        }
        above += hist[hi];
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
    // Everything above the threshold, then the lowest-index ties at it. Branch-free: with
    // half the channels kept, a branch per channel would mispredict half the time.
    let mut ties = k as u32 - above;
    // One slot past k takes the writes of channels not kept once all k are in.
    out.resize(k + 1, 0);
    let mut len = 0usize;
    for (i, &x) in keys.iter().enumerate() {
        let tie = (x == threshold) & (ties > 0);
        let take = (x > threshold) | tie;
        out[len] = i as u32;
        len += take as usize;
        ties -= tie as u32;
    }
    debug_assert_eq!(len, k);
    out.truncate(k);
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
}
