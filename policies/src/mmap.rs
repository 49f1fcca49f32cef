//! `mmap`: the weights memory-mapped from the original per-matrix file and paged in by the OS,
//! what llama.cpp does when the model does not fit: every decode step touches every weight; a
//! page not in the page cache faults and is read with the kernel's readahead; the page cache
//! (everything the budget leaves) evicts least-recently-used pages.
//!
//! The cache is kept at readahead-window granularity: a decode step scans each matrix in order,
//! so the pages of one window are always used together and evicting them one by one or as a
//! window gives the same hits. Faults are synchronous: an op's missing windows are read when it
//! starts (after the previous op), as many at once as there are threads faulting
//! (`io_queue_depth` of the experiment, e.g. llama.cpp's compute threads).

use crate::cache::{RunLru, UnitCache};
use crate::decode;
use crate::plan::{DramChange, Extent, IssueAfter, Read, TokenPlan};
use crate::policy::{
    param_key, parse_params, Policy, PolicyContext, PolicyEntry, PolicyError, PolicySetup,
    TokenInfo,
};
use flashsim_workloads::shape::TensorKind;
use flashsim_workloads::toml_source::{ConfigError, TomlSource};
use serde::Deserialize;

pub const ENTRY: PolicyEntry = PolicyEntry {
    name: "mmap",
    summary: "memory-mapped weights through an LRU page cache with readahead (llama.cpp)",
    build,
};

/// Parameters of `[policies.mmap]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmapParams {
    /// Readahead window, KiB. Default 128: Linux's default `read_ahead_kb`.
    #[serde(default = "ra")]
    pub readahead_kib: u64,
    /// Page size, KiB. Default 4.
    #[serde(default = "page")]
    pub page_kib: u64,
    #[serde(default = "crate::policy::default_compute_unit")]
    pub compute_unit: String,
}

fn ra() -> u64 {
    128
}
fn page() -> u64 {
    4
}

fn build(
    src: &TomlSource,
    params: toml::Value,
    key: &[&str],
) -> Result<Box<dyn Policy>, ConfigError> {
    let p: MmapParams = parse_params(src, params, key)?;
    let at = |k: &str| param_key(key, k);
    if p.page_kib == 0 || !p.page_kib.is_power_of_two() {
        return Err(src.invalid(&at("page_kib"), "must be a power of two"));
    }
    if p.readahead_kib < p.page_kib || !p.readahead_kib.is_multiple_of(p.page_kib) {
        return Err(src.invalid(&at("readahead_kib"), "must be a multiple of page_kib"));
    }
    Ok(Box::new(Mmap {
        p,
        cache: None,
        window_bytes: 0,
        windows: 0,
        step: 0,
    }))
}

pub struct Mmap {
    p: MmapParams,
    cache: Option<RunLru>,
    window_bytes: u64,
    windows: u64,
    step: u64,
}

impl Mmap {
    /// Windows of the file covering `e` (windows are aligned in the file).
    fn windows_of(&self, e: Extent, out: &mut Vec<u32>) {
        let first = e.offset / self.window_bytes;
        let last = (e.end() - 1) / self.window_bytes;
        out.extend((first..=last).map(|w| w as u32));
    }
}

impl Policy for Mmap {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn setup(&mut self, ctx: &PolicyContext) -> Result<PolicySetup, PolicyError> {
        self.window_bytes = self.p.readahead_kib * 1024;
        self.windows = ctx.layout.file_bytes.div_ceil(self.window_bytes);
        let free = ctx.dram_budget_bytes.saturating_sub(ctx.kv_cache_bytes);
        let capacity = (free / self.window_bytes) as usize;
        // The largest op's windows must fit at once (they are all touched by one op).
        let n_ops = decode::lm_head_op(ctx.shape) + 1;
        let mut w = Vec::new();
        let mut largest = 0;
        for op in 0..n_ops {
            w.clear();
            for t in decode::op_tensors(ctx.shape, ctx.layout, op) {
                self.windows_of(t.whole(), &mut w);
            }
            largest = largest.max(w.len());
        }
        if capacity < largest + 1 {
            return Err(PolicyError::DramBudget {
                needed_bytes: (largest as u64 + 1) * self.window_bytes + ctx.kv_cache_bytes,
                budget_bytes: ctx.dram_budget_bytes,
                what: "the KV cache and the page cache for the largest matrix".into(),
            });
        }
        self.cache = Some(RunLru::new(self.windows as usize, capacity));
        // The page cache fills as pages are read (retained reads) and shrinks by evictions.
        Ok(PolicySetup {
            resident: Vec::new(),
            peak_buffer_bytes: 0,
            reserved_bytes: 0,
        })
    }

    fn plan_token(
        &mut self,
        ctx: &PolicyContext,
        token: TokenInfo,
    ) -> Result<TokenPlan, PolicyError> {
        let shape = ctx.shape;
        let ops = ctx.dense_ops(token, &self.p.compute_unit);
        let mut plan = TokenPlan {
            ops,
            ..TokenPlan::default()
        };
        let emb = ctx
            .layout
            .tensor(TensorKind::Embedding, None)
            .expect("embedding");
        let mut wins = Vec::new();
        for op in 0..plan.ops.len() as u32 {
            wins.clear();
            if op == 0 {
                self.windows_of(emb.unit(token.token_id as u64 % emb.units()), &mut wins);
            }
            for t in decode::op_tensors(shape, ctx.layout, op) {
                self.windows_of(t.whole(), &mut wins);
            }
            wins.sort_unstable();
            wins.dedup();
            self.step += 1;
            let cache = self.cache.as_mut().expect("set up");
            let access = cache.access(self.step, &wins);
            plan.cache_lookups += wins.len() as u64;
            plan.cache_hits += access.hits.len() as u64;
            let after = if op == 0 {
                IssueAfter::TokenStart
            } else {
                IssueAfter::OpDone(op - 1)
            };
            // The last window of the file may be short: it holds (and frees) only its bytes.
            let window = |w: u32| {
                let offset = w as u64 * self.window_bytes;
                (
                    offset,
                    self.window_bytes.min(ctx.layout.file_bytes - offset),
                )
            };
            if !access.evicted.is_empty() {
                let bytes = access.evicted.iter().map(|&w| window(w).1).sum();
                plan.evictions.push((after, bytes));
                if ctx.op_weights {
                    plan.dram_changes.extend(access.evicted.iter().map(|&w| {
                        let (offset, bytes) = window(w);
                        DramChange::Evict(after, Extent { offset, bytes })
                    }));
                }
            }
            for &w in &access.misses {
                let (offset, bytes) = window(w);
                plan.reads
                    .push(Read::demand(Extent { offset, bytes }, op, after, true));
            }
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::WeightLayout;
    use flashsim_workloads::ModelShape;

    fn run(budget: u64) -> Vec<TokenPlan> {
        run_with(budget, 4, 64)
    }

    fn run_with(budget: u64, readahead_kib: u64, vocab: u32) -> Vec<TokenPlan> {
        // 1 layer, hidden 64, FFN 128, fp16, 4 KiB alignment: embedding 8 KiB (2 windows of
        // 4 KiB), q/k/v/o 8 KiB each, gate/up/down 16 KiB each, LM head 8 KiB: 96 KiB, 24 windows.
        let s = ModelShape {
            name: "t".into(),
            source: String::new(),
            layers: 1,
            hidden: 64,
            intermediate: 128,
            heads: 1,
            kv_heads: 1,
            vocab,
            bytes_per_weight: 2.0,
            gated: true,
            tied_embeddings: false,
            head_dim: None,
        };
        let l = WeightLayout::per_matrix(&s, 4096);
        assert_eq!(l.file_bytes, (80 + vocab as u64 / 4) * 1024);
        let ctx = PolicyContext {
            shape: &s,
            layout: &l,
            dram_budget_bytes: budget,
            kv_cache_bytes: 0,
            kv_bytes_per_value: 2,
            prompt_tokens: 0,
            tokens: 3,
            max_read_bytes: 1 << 20,
            trace: None,
            record_masks: false,
            op_weights: false,
        };
        let mut p = Mmap {
            p: MmapParams {
                readahead_kib,
                page_kib: 4,
                compute_unit: "cpu".into(),
            },
            cache: None,
            window_bytes: 0,
            windows: 0,
            step: 0,
        };
        p.setup(&ctx).unwrap();
        (0..3)
            .map(|i| {
                p.plan_token(
                    &ctx,
                    TokenInfo {
                        index: i,
                        context: i as u64,
                        token_id: 0,
                    },
                )
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn a_short_last_window_frees_only_its_bytes() {
        // Vocabulary 32: embedding and LM head 4 KiB each, an 88 KiB file. 12 KiB windows: seven
        // full and a 4 KiB last one; room for seven, so tokens evict. The page cache never frees
        // more than it read (the bug: a short window evicted as a full one).
        let plans = run_with(84 * 1024, 12, 32);
        let (mut in_use, mut reads) = (0i64, Vec::new());
        for p in &plans {
            for r in &p.reads {
                reads.push(r.extent.bytes);
                in_use += r.extent.bytes as i64;
            }
            in_use -= p.evictions.iter().map(|e| e.1 as i64).sum::<i64>();
            // Full after the first token: seven windows, at most one of them the short one.
            assert!((76 * 1024..=84 * 1024).contains(&in_use), "{in_use} B held");
        }
        assert!(reads.contains(&(4 * 1024)), "{reads:?}");
        assert!(plans[1..].iter().any(|p| !p.evictions.is_empty()));
    }

    #[test]
    fn lru_page_cache_thrashes_below_the_model_size_and_holds_it_above() {
        // Room for everything: token 0 reads the 23 windows it touches (one of the embedding's
        // two, for its row), later tokens read nothing.
        let big = run(1 << 20);
        assert_eq!(big[0].read_bytes(), 23 * 4096);
        assert_eq!((big[1].read_bytes(), big[2].read_bytes()), (0, 0));
        // Room for 13 windows (the FFN's 12 at once, plus one), under a cyclic scan of 23: token
        // 0 reads all 23; afterwards each op pushes out the oldest windows, and only the FFN's last
        // two survive until the FFN comes round again: 21 read and 2 hits per token.
        let small = run(13 * 4096);
        assert_eq!(small[0].read_bytes(), 23 * 4096);
        for p in &small[1..] {
            assert_eq!((p.read_bytes(), p.cache_hits), (21 * 4096, 2));
            // Full before and after: every window read pushes one out.
            let evicted: u64 = p.evictions.iter().map(|e| e.1).sum();
            assert_eq!(evicted, 21 * 4096);
        }
    }
}
