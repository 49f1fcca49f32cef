//! What a policy returns for one token: ops to compute, in order, and reads that feed them.

use serde::Serialize;

/// A contiguous byte range of the weight file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Extent {
    pub offset: u64,
    pub bytes: u64,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.bytes
    }
}

/// When a read may be issued. Reads are issued in the order the plan lists them, each as soon
/// as its condition holds and an I/O slot is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum IssueAfter {
    /// As soon as the token begins.
    TokenStart,
    /// Once op `k` of this token has started computing (prefetch under compute).
    OpStart(u32),
    /// Once op `k` of this token has finished (no overlap with that op).
    OpDone(u32),
}

/// One read from flash into DRAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Read {
    pub extent: Extent,
    /// Index of the op that cannot start before this read completes.
    pub needed_by: u32,
    pub issue_after: IssueAfter,
    /// `false`: a streaming buffer, freed when op `free_after` completes. `true`: the bytes stay
    /// in DRAM (a cache fill) until the policy evicts them.
    pub retain: bool,
    /// The last op that uses a streaming buffer (at least `needed_by`).
    pub free_after: u32,
    /// A prefetch: issued only while no eligible on-demand read is waiting.
    pub prefetch: bool,
}

impl Read {
    /// An on-demand read needed (and then released) by op `needed_by`.
    pub fn demand(extent: Extent, needed_by: u32, issue_after: IssueAfter, retain: bool) -> Self {
        Read {
            extent,
            needed_by,
            issue_after,
            retain,
            free_after: needed_by,
            prefetch: false,
        }
    }
}

/// What an op computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Q/K/V/O projections and attention over the KV cache of one layer (or, when a policy
    /// splits it, Q/K/V and attention only).
    Attention,
    /// The O projection, when a policy splits attention (its input is the attention output).
    AttentionOut,
    /// The FFN of one layer (or, when split, its gate/up half).
    Ffn,
    /// The down projection, when a policy splits the FFN (its inputs depend on gate/up).
    FfnDown,
    /// Final norm and classifier.
    LmHead,
    /// DRAM bookkeeping a policy pays for (e.g. LLM in a Flash's delete-by-copy).
    DramManagement,
}

/// One unit of compute. Ops of a token run one after another (batch-1 decode is a chain).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Op {
    pub kind: OpKind,
    pub layer: Option<u32>,
    /// Name of the compute unit in the device file (`cpu`, `gpu`, `npu`).
    pub unit: String,
    /// Floating-point operations.
    pub flops: u64,
    /// Bytes the op reads and writes in DRAM (weights, KV cache, activations).
    pub dram_bytes: u64,
    /// The weight-file extents the op multiplies by (part of `dram_bytes`), listed only when
    /// the context asks (`op_weights`: the real backend computes on these bytes); empty
    /// otherwise, which costs the simulator nothing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<Extent>,
    /// How many separate runs of DRAM the op's weights lie in (1 for one whole matrix, or
    /// several back to back; one per run of adjacent rows or columns for a gathering op, 0 for an op that
    /// multiplies by no weights): the compute model charges each run
    /// `piece_overhead_ns`. Counted always, whether `weights` is listed or not.
    pub pieces: u64,
}

impl Op {
    /// Bytes of the listed weights.
    pub fn weight_bytes(&self) -> u64 {
        self.weights.iter().map(|e| e.bytes).sum()
    }
}

/// How many runs `extents`, in file order, form: one more wherever an extent does not start
/// where the one before it ended (whole matrices that lie back to back are one run).
pub fn extent_runs(extents: &[Extent]) -> u64 {
    if extents.is_empty() {
        return 0;
    }
    1 + extents
        .windows(2)
        .filter(|w| w[1].offset != w[0].end())
        .count() as u64
}

/// How many runs of consecutive integers `ascending` holds (`[1, 2, 3, 7, 9, 10]`: 3). One
/// comparison per neighbouring pair, which vectorizes: it runs for every gathering op of every
/// token.
pub fn index_runs(ascending: &[u32]) -> u64 {
    if ascending.is_empty() {
        return 0;
    }
    1 + ascending
        .windows(2)
        .filter(|w| w[1] != w[0].wrapping_add(1))
        .count() as u64
}

/// `extents` as an op's weight list: sorted, adjacent and overlapping ones merged (no size
/// cap: this is what the op touches, not how it is read).
pub fn op_weights(extents: Vec<Extent>) -> Vec<Extent> {
    crate::layout::coalesce(extents, u64::MAX)
}

/// The plan for one generated token.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TokenPlan {
    pub ops: Vec<Op>,
    pub reads: Vec<Read>,
    /// Bytes of retained data the policy evicts at the start of this token.
    pub evicted_bytes: u64,
    /// Evictions during the token: bytes freed when the condition first holds, before the
    /// reads it allows are issued (e.g. a page cache making room for the next op's faults).
    pub evictions: Vec<(IssueAfter, u64)>,
    /// The weight-file extents the policy's DRAM lets go of or takes in, each when its
    /// condition first holds (in list order), listed only when the context asks
    /// (`op_weights`: a backend that keeps the bytes themselves). Reads hold their extents
    /// by themselves (a buffer until its `free_after` op is done, a retained read until
    /// evicted); these are the rest: a cache's victims, and cache fills copied out of this
    /// token's buffers. The byte counts above are what the accounting uses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dram_changes: Vec<DramChange>,
    /// Share of the FFN activation mass (Σ|h| over computed neurons / Σ|h|) this token's masks
    /// keep, averaged over layers; `None` when the policy computes everything.
    pub retained_mass: Option<f64>,
    /// Cache lookups and hits this token (units of the policy's cache), when it has a cache.
    pub cache_lookups: u64,
    pub cache_hits: u64,
    /// The masks this token's compute applied, when the context asks for them
    /// (`record_masks`): per layer and site, the kept channels (sorted). A site not listed is
    /// computed densely.
    pub masks: Vec<AppliedMask>,
}

/// A change to which weight bytes a policy keeps in DRAM (see [`TokenPlan::dram_changes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DramChange {
    /// The extent's bytes, held until now (by a retained read or an admission), are let go.
    Evict(IssueAfter, Extent),
    /// The extent's bytes, in DRAM now (read this token), are kept until evicted.
    Admit(IssueAfter, Extent),
}

impl DramChange {
    pub fn when(&self) -> IssueAfter {
        match *self {
            DramChange::Evict(w, _) | DramChange::Admit(w, _) => w,
        }
    }
}

/// One mask a plan applied: the channels of `site` in `layer` that were computed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedMask {
    pub layer: u32,
    #[serde(skip)]
    pub site: flashsim_workloads::model::Site,
    pub keep: Vec<u32>,
}

impl TokenPlan {
    /// Total bytes this token reads from flash.
    pub fn read_bytes(&self) -> u64 {
        self.reads.iter().map(|r| r.extent.bytes).sum()
    }

    /// Checks the plan's internal consistency: every read names an existing op, and no read is
    /// issued after the op that needs it has started.
    pub fn check(&self) -> Result<(), String> {
        let n = self.ops.len() as u32;
        for (j, op) in self.ops.iter().enumerate() {
            if op.weight_bytes() > op.dram_bytes {
                return Err(format!(
                    "op {j} lists {} B of weights but touches {} B of DRAM",
                    op.weight_bytes(),
                    op.dram_bytes
                ));
            }
        }
        // The op a moment waits for, when the token has no such op.
        let beyond = |when: IssueAfter| match when {
            IssueAfter::OpStart(k) | IssueAfter::OpDone(k) if k >= n => Some(k),
            _ => None,
        };
        for (i, &(when, _)) in self.evictions.iter().enumerate() {
            if let Some(k) = beyond(when) {
                return Err(format!("eviction {i} waits for op {k} of {n}"));
            }
        }
        for (i, c) in self.dram_changes.iter().enumerate() {
            if let Some(k) = beyond(c.when()) {
                return Err(format!("DRAM change {i} waits for op {k} of {n}"));
            }
        }
        for (i, r) in self.reads.iter().enumerate() {
            if r.needed_by >= n {
                return Err(format!("read {i} is needed by op {} of {n}", r.needed_by));
            }
            if r.extent.bytes == 0 {
                return Err(format!("read {i} has zero bytes"));
            }
            if r.free_after < r.needed_by || r.free_after >= n {
                return Err(format!(
                    "read {i} is freed after op {} but needed by op {}",
                    r.free_after, r.needed_by
                ));
            }
            match r.issue_after {
                IssueAfter::TokenStart => {}
                IssueAfter::OpStart(k) if k < r.needed_by => {}
                IssueAfter::OpDone(k) if k < r.needed_by => {}
                other => {
                    return Err(format!(
                        "read {i} waits for {other:?} but is needed by op {}",
                        r.needed_by
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Something with a magnitude: an activation (`f32`), or an f16 magnitude key (`u16`, sign
/// cleared) as `TraceView::read_keys` gives, which is the same number for a trace stored in f16.
pub trait Magnitude: Copy {
    fn magnitude(self) -> f64;
}
impl Magnitude for f32 {
    fn magnitude(self) -> f64 {
        self.abs() as f64
    }
}
impl Magnitude for u16 {
    /// |f16| from its bits, exactly, without the `half` crate's per-call feature dispatch.
    fn magnitude(self) -> f64 {
        let (e, m) = (((self >> 10) & 0x1f) as u32, (self & 0x3ff) as u32);
        match e {
            0 => m as f64 * (1.0 / 16_777_216.0),
            31 if m == 0 => f64::INFINITY,
            31 => f64::NAN,
            _ => f32::from_bits(((e + 112) << 23) | (m << 13)) as f64,
        }
    }
}

/// The f16 magnitude `key` (bits with the sign cleared, finite: below 0x7c00) as an integer
/// count of 2^-24, the f16 quantum: every finite f16 is such a multiple, below 2^40, so sums of
/// magnitudes (and, in `u128`, of their squares) over any width are exact and order-free.
#[inline]
pub fn f16_quanta(key: u16) -> u64 {
    let (e, m) = ((key >> 10) as u64, (key & 0x3ff) as u64);
    let normal = (e != 0) as u64;
    (m | normal << 10) << (e - normal)
}

/// One f16 quantum, 2^-24.
pub const F16_QUANTUM: f64 = 1.0 / 16_777_216.0;

/// Share of the L1 mass of the f16 magnitude `keys` held by the channels `keep` (1 when all
/// are zero): the "retained activation mass" of a mask. Summed exactly in f16 quanta (infinite
/// keys count as the largest finite f16), so it does not depend on the order of `keep`.
pub fn kept_share(keys: &[u16], keep: &[u32]) -> f64 {
    let q = |k: u16| f16_quanta(k.min(0x7bff));
    let total: u64 = keys.iter().map(|&k| q(k)).sum();
    if total == 0 {
        return 1.0;
    }
    let kept: u64 = keep.iter().map(|&i| q(keys[i as usize])).sum();
    kept as f64 / total as f64
}

/// Splits `extent` into reads of at most `max_bytes`, each needed by `needed_by`.
pub fn chunked(
    extent: Extent,
    max_bytes: u64,
    needed_by: u32,
    issue_after: IssueAfter,
    out: &mut Vec<Read>,
) {
    assert!(max_bytes > 0);
    let mut off = extent.offset;
    while off < extent.end() {
        let bytes = max_bytes.min(extent.end() - off);
        out.push(Read::demand(
            Extent { offset: off, bytes },
            needed_by,
            issue_after,
            false,
        ));
        off += bytes;
    }
}

#[cfg(test)]
mod magnitude_tests {
    use super::Magnitude;

    #[test]
    fn f16_magnitude_matches_the_half_crate_on_every_bit_pattern() {
        for bits in 0..=u16::MAX {
            let want = half::f16::from_bits(bits & 0x7fff).to_f32() as f64;
            let got = bits.magnitude();
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{bits:#06x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn f16_quanta_are_exact_multiples_of_two_to_the_minus_24() {
        for key in 0..0x7c00u16 {
            let got = super::f16_quanta(key) as f64 * super::F16_QUANTUM;
            assert_eq!(got, key.magnitude(), "{key:#06x}");
        }
        assert_eq!(super::f16_quanta(0x7bff), 65504 << 24);
    }
}

#[cfg(test)]
mod piece_tests {
    use super::{extent_runs, index_runs, Extent};

    #[test]
    fn runs_of_indices_and_of_extents() {
        assert_eq!(index_runs(&[1, 2, 3, 7, 9, 10]), 3);
        assert_eq!(index_runs(&[]), 0);
        assert_eq!(index_runs(&[5]), 1);
        assert_eq!(index_runs(&[0, u32::MAX]), 2);
        // Whole matrices back to back are one run; a gap starts another.
        let e = |offset, bytes| Extent { offset, bytes };
        assert_eq!(extent_runs(&[e(0, 10), e(10, 5), e(20, 5)]), 2);
        assert_eq!(extent_runs(&[e(0, 10)]), 1);
        assert_eq!(extent_runs(&[]), 0);
    }
}

#[cfg(test)]
mod check_tests {
    use super::{DramChange, Extent, IssueAfter, Op, OpKind, TokenPlan};

    #[test]
    fn evictions_and_dram_changes_wait_only_for_ops_the_token_has() {
        let op = Op {
            kind: OpKind::Ffn,
            layer: Some(0),
            unit: "cpu".into(),
            flops: 2,
            dram_bytes: 2,
            weights: Vec::new(),
            pieces: 0,
        };
        let mut plan = TokenPlan {
            ops: vec![op.clone(), op],
            ..TokenPlan::default()
        };
        let e = Extent {
            offset: 0,
            bytes: 4096,
        };
        plan.evictions = vec![(IssueAfter::TokenStart, 1), (IssueAfter::OpDone(1), 1)];
        plan.dram_changes = vec![DramChange::Admit(IssueAfter::OpStart(1), e)];
        assert_eq!(plan.check(), Ok(()));
        plan.evictions.push((IssueAfter::OpStart(2), 1));
        assert_eq!(
            plan.check(),
            Err("eviction 2 waits for op 2 of 2".to_string())
        );
        plan.evictions.pop();
        plan.dram_changes
            .push(DramChange::Evict(IssueAfter::OpDone(2), e));
        assert_eq!(
            plan.check(),
            Err("DRAM change 1 waits for op 2 of 2".to_string())
        );
    }
}
