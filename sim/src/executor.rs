//! Executes a policy's plans on the event engine: the decode pipeline.
//!
//! Per token the policy returns ops (a chain: op j starts when op j − 1 is done) and reads.
//! Reads are issued in plan order, each once its `issue_after` condition holds and fewer than
//! `io_queue_depth` reads are in flight, on-demand reads before prefetches; an op starts once
//! every read it needs has completed. Streaming buffers are allocated in DRAM when their read is
//! issued and freed when their `free_after` op finishes; the KV cache grows by one token per step.
//!
//! Metrics, per token (see `docs/metrics.md` in the README):
//! - `wall`: from the token's start to its last op's end.
//! - `flash_busy`: time with at least one read in flight.
//! - `compute_busy`: time ops were computing.
//! - `stall`: time the next op waited for its reads after the previous op had finished.
//!
//! Because ops form a chain, `wall = compute_busy + stall` exactly.

use crate::device::Device;
use crate::engine::{Engine, Event, Handler};
use crate::error::SimError;
use crate::hw::dram::Dram;
use crate::time::Ps;
use flashsim_policies::{DramChange, Extent, Op};
use flashsim_policies::{IssueAfter, Policy, PolicyContext, PolicySetup, TokenInfo, TokenPlan};
use serde::Serialize;

/// Per-token measurements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TokenStats {
    pub start: Ps,
    pub wall: Ps,
    pub flash_busy: Ps,
    pub compute_busy: Ps,
    pub stall: Ps,
    pub read_bytes: u64,
    pub reads: u64,
    pub retained_mass: Option<f64>,
    pub cache_lookups: u64,
    pub cache_hits: u64,
}

/// The outcome of one simulated generation.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStats {
    pub tokens: Vec<TokenStats>,
    /// Per token, the masks its plan applied (when the context asked for them).
    pub masks: Vec<Vec<flashsim_policies::AppliedMask>>,
    pub dram_peak_bytes: u64,
    pub resident_weight_bytes: u64,
    pub events: u64,
    pub end: Ps,
}

/// A record of one flash request or op, for timelines and property tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    Read {
        token: u32,
        issued: Ps,
        done: Ps,
        bytes: u64,
    },
    Op {
        token: u32,
        op: u32,
        unit: usize,
        start: Ps,
        done: Ps,
    },
}

/// How the pipeline issues reads.
#[derive(Debug, Clone, Copy)]
pub struct ExecConfig {
    /// Reads in flight at once (I/O threads × per-thread depth).
    pub io_queue_depth: u32,
    /// Keep an [`Activity`] log.
    pub record_activity: bool,
}

/// What a pipeline event is: a read or an op finished, or the next token starts.
#[derive(Debug, Clone, Copy)]
pub enum Ev {
    IoDone { read: u32 },
    OpDone { op: u32 },
    TokenStart,
}

impl Event for Ev {
    fn kind(&self) -> u8 {
        match self {
            Ev::IoDone { .. } => 0,
            Ev::OpDone { .. } => 1,
            Ev::TokenStart => 2,
        }
    }
}

/// What executes a plan's reads and ops: the simulated hardware (completion times known when
/// the work starts) or real hardware (completions reported later as [`Ev`]s).
pub trait Backend {
    /// The index of compute unit `name`.
    fn unit_index(&self, name: &str) -> Option<usize>;
    /// Token `token` begins (before any of its reads is submitted). Default: nothing to do.
    fn begin_token(&mut self, _token: u32) {}
    /// Starts plan read `read` of `extent`; its completion time if known now.
    fn submit(&mut self, now: Ps, read: u32, extent: Extent) -> Result<Option<Ps>, SimError>;
    /// Starts op `j` on `unit` (the previous op has finished and its reads are in), with
    /// `reads_beside`: reads in flight as it starts: when it starts, and when it ends if known
    /// now.
    fn start_op(
        &mut self,
        now: Ps,
        j: u32,
        op: &Op,
        unit: usize,
        reads_beside: bool,
        dram: &mut Dram,
    ) -> Result<(Ps, Option<Ps>), SimError>;
    /// The plan now holds the bytes of `extent` in DRAM (a read from its issue, a cache fill
    /// from its admission): called only when the context lists op weights, for a backend that
    /// keeps the bytes themselves. Default: nothing to do.
    fn hold(&mut self, _extent: Extent) -> Result<(), SimError> {
        Ok(())
    }
    /// The plan lets go of one hold of `extent` (a buffer after its last op, an eviction).
    fn let_go(&mut self, _extent: Extent) -> Result<(), SimError> {
        Ok(())
    }
}

/// The simulated hardware: the device's flash and compute units, the DRAM bus.
struct Simulated(Device);

impl Backend for Simulated {
    fn unit_index(&self, name: &str) -> Option<usize> {
        self.0.unit_index(name)
    }
    fn submit(&mut self, now: Ps, _read: u32, e: Extent) -> Result<Option<Ps>, SimError> {
        self.0.flash.submit(now, e.offset, e.bytes).map(Some)
    }
    fn start_op(
        &mut self,
        now: Ps,
        _j: u32,
        op: &Op,
        unit: usize,
        reads_beside: bool,
        dram: &mut Dram,
    ) -> Result<(Ps, Option<Ps>), SimError> {
        let unit = &mut self.0.units[unit];
        let start = now.max(unit.free_at());
        let own =
            start.checked_add(unit.op_time(op.flops, op.dram_bytes, op.pieces, reads_beside)?)?;
        let done = own.max(dram.transfer(start, op.dram_bytes)?);
        unit.occupy(done);
        Ok((start, Some(done)))
    }
}

/// Executes plans on a [`Backend`]: issues reads, starts ops, keeps DRAM and the metrics.
pub struct Pipeline<'a, B: Backend> {
    policy: &'a mut dyn Policy,
    ctx: PolicyContext<'a>,
    backend: B,
    dram: Dram,
    cfg: ExecConfig,
    tokens_total: u32,
    kv_bytes_per_token: u64,
    /// The input token of each step (it picks the embedding row).
    token_ids: Vec<u32>,
    // Per-token state.
    token: u32,
    plan: TokenPlan,
    op_unit: Vec<usize>,
    pending: Vec<u32>,
    buffers: Vec<u64>,
    /// Per op, the extents of the buffers freed when it finishes (only with `op_weights`).
    buffer_extents: Vec<Vec<Extent>>,
    /// Bytes of the plans' DRAM changes made so far: evicted, admitted.
    changed_bytes: (u64, u64),
    /// The token's evictions and DRAM changes by the moment they wait for ([`slot`]): bytes
    /// to free, and the plan indices of the changes (in plan order), slot `s` at
    /// `changes[change_at[s]..change_at[s + 1]]`; so that each moment costs its own changes,
    /// not a pass over the token's (thousands, with a cache that moves channel by channel).
    evict_bytes: Vec<u64>,
    change_at: Vec<u32>,
    changes: Vec<u32>,
    started: Vec<bool>,
    finished: Vec<bool>,
    next_read: usize,
    /// Plan indices of on-demand and prefetch reads, and the next of each to issue.
    demand: Vec<u32>,
    prefetch: Vec<u32>,
    next_demand: usize,
    next_prefetch: usize,
    in_flight: u32,
    next_op: usize,
    running: bool,
    ready_at: Ps,
    op_start: Ps,
    busy_since: Ps,
    read_issued: Vec<Ps>,
    cur: TokenStats,
    stats: Vec<TokenStats>,
    masks: Vec<Vec<flashsim_policies::AppliedMask>>,
    activity: Vec<Activity>,
    resident_weight_bytes: u64,
}

/// The plan of generated token `index` (input `token_id`), as the pipeline asks `policy` for
/// it (the KV cache then holds the prompt and the tokens before it), checked: a plan that
/// breaks its own rules, or has no ops, is an error.
pub fn plan_token(
    policy: &mut dyn Policy,
    ctx: &PolicyContext,
    index: u32,
    token_id: u32,
) -> Result<TokenPlan, SimError> {
    let info = TokenInfo {
        index,
        context: ctx.prompt_tokens as u64 + index as u64,
        token_id,
    };
    let plan = policy.plan_token(ctx, info)?;
    plan.check().map_err(SimError::Plan)?;
    if plan.ops.is_empty() {
        return Err(SimError::Plan("a token plan has no ops".into()));
    }
    Ok(plan)
}

/// Where the moment `when` falls in a token of `n` ops, `0..2n + 1`: the token's start, then
/// each op's start and end (a checked plan waits for no op beyond its last).
fn slot(when: IssueAfter) -> usize {
    match when {
        IssueAfter::TokenStart => 0,
        IssueAfter::OpStart(k) => 1 + 2 * k as usize,
        IssueAfter::OpDone(k) => 2 + 2 * k as usize,
    }
}

impl<B: Backend> Pipeline<'_, B> {
    fn begin_token(&mut self, now: Ps, follow: &mut Vec<(Ps, Ev)>) -> Result<(), SimError> {
        self.backend.begin_token(self.token);
        let token_id = self.token_ids[self.token as usize];
        let mut plan = plan_token(self.policy, &self.ctx, self.token, token_id)?;
        if self.ctx.record_masks {
            self.masks.push(std::mem::take(&mut plan.masks));
        }
        let n = plan.ops.len();
        self.op_unit = plan
            .ops
            .iter()
            .map(|op| {
                self.backend
                    .unit_index(&op.unit)
                    .ok_or_else(|| SimError::UnknownUnit(op.unit.clone()))
            })
            .collect::<Result<_, _>>()?;
        self.pending = vec![0; n];
        for r in &plan.reads {
            self.pending[r.needed_by as usize] += 1;
        }
        self.buffers = vec![0; n];
        if self.ctx.op_weights {
            self.buffer_extents = vec![Vec::new(); n];
        }
        self.started = vec![false; n];
        self.finished = vec![false; n];
        if self.cfg.record_activity {
            self.read_issued = vec![Ps::ZERO; plan.reads.len()];
        }
        self.demand = (0..plan.reads.len() as u32)
            .filter(|&i| !plan.reads[i as usize].prefetch)
            .collect();
        self.prefetch = (0..plan.reads.len() as u32)
            .filter(|&i| plan.reads[i as usize].prefetch)
            .collect();
        self.next_demand = 0;
        self.next_prefetch = 0;
        self.plan = plan;
        self.next_read = 0;
        self.next_op = 0;
        self.running = false;
        self.ready_at = now;
        self.cur = TokenStats {
            start: now,
            retained_mass: self.plan.retained_mass,
            cache_lookups: self.plan.cache_lookups,
            cache_hits: self.plan.cache_hits,
            ..TokenStats::default()
        };
        self.evict_bytes = vec![0; 2 * n + 1];
        for &(when, bytes) in &self.plan.evictions {
            self.evict_bytes[slot(when)] += bytes;
        }
        self.change_at = vec![0; 2 * n + 2];
        for c in &self.plan.dram_changes {
            self.change_at[slot(c.when()) + 1] += 1;
        }
        for s in 1..self.change_at.len() {
            self.change_at[s] += self.change_at[s - 1];
        }
        let mut fill = self.change_at.clone();
        self.changes = vec![0; self.plan.dram_changes.len()];
        for (i, c) in self.plan.dram_changes.iter().enumerate() {
            let at = &mut fill[slot(c.when())];
            self.changes[*at as usize] = i as u32;
            *at += 1;
        }
        self.dram.free(self.plan.evicted_bytes)?;
        self.evict(IssueAfter::TokenStart)?;
        self.dram.alloc(self.kv_bytes_per_token)?;
        self.issue(now, follow)?;
        self.start_op(now, follow)
    }

    /// Frees the evictions that wait for `when`, and makes the DRAM changes that do.
    fn evict(&mut self, when: IssueAfter) -> Result<(), SimError> {
        let s = slot(when);
        let (from, to) = (self.change_at[s] as usize, self.change_at[s + 1] as usize);
        for &i in &self.changes[from..to] {
            match self.plan.dram_changes[i as usize] {
                DramChange::Evict(_, e) => {
                    self.changed_bytes.0 += e.bytes;
                    self.backend.let_go(e)?
                }
                DramChange::Admit(_, e) => {
                    self.changed_bytes.1 += e.bytes;
                    self.backend.hold(e)?
                }
            }
        }
        self.dram.free(self.evict_bytes[s])
    }

    fn condition(&self, after: IssueAfter) -> bool {
        match after {
            IssueAfter::TokenStart => true,
            IssueAfter::OpStart(k) => self.started[k as usize],
            IssueAfter::OpDone(k) => self.finished[k as usize],
        }
    }

    /// Issues reads while I/O slots are free: the next on-demand read in plan order when its
    /// condition holds, otherwise the next prefetch in plan order when its condition holds.
    fn issue(&mut self, now: Ps, follow: &mut Vec<(Ps, Ev)>) -> Result<(), SimError> {
        while self.in_flight < self.cfg.io_queue_depth {
            let ready = |q: &[u32], at: usize, me: &Self| {
                q.get(at)
                    .copied()
                    .filter(|&i| me.condition(me.plan.reads[i as usize].issue_after))
            };
            let idx = if let Some(i) = ready(&self.demand, self.next_demand, self) {
                self.next_demand += 1;
                i
            } else if let Some(i) = ready(&self.prefetch, self.next_prefetch, self) {
                self.next_prefetch += 1;
                i
            } else {
                break;
            };
            let r = self.plan.reads[idx as usize];
            self.dram.alloc(r.extent.bytes)?;
            if !r.retain {
                self.buffers[r.free_after as usize] += r.extent.bytes;
            }
            if self.ctx.op_weights {
                self.backend.hold(r.extent)?;
                if !r.retain {
                    self.buffer_extents[r.free_after as usize].push(r.extent);
                }
            }
            let done = self.backend.submit(now, idx, r.extent)?;
            if self.in_flight == 0 {
                self.busy_since = now;
            }
            self.in_flight += 1;
            self.cur.read_bytes += r.extent.bytes;
            self.cur.reads += 1;
            if self.cfg.record_activity {
                self.read_issued[idx as usize] = now;
            }
            if let Some(done) = done {
                follow.push((done, Ev::IoDone { read: idx }));
            }
            self.next_read += 1;
        }
        Ok(())
    }

    fn start_op(&mut self, now: Ps, follow: &mut Vec<(Ps, Ev)>) -> Result<(), SimError> {
        let j = self.next_op;
        if self.running || j >= self.plan.ops.len() || self.pending[j] > 0 {
            return Ok(());
        }
        self.cur.stall = self
            .cur
            .stall
            .checked_add(now.checked_sub(self.ready_at)?)?;
        // The reads this start lets go are issued first: they run beside the op.
        self.running = true;
        self.started[j] = true;
        self.evict(IssueAfter::OpStart(j as u32))?;
        self.issue(now, follow)?;
        let (start, done) = self.backend.start_op(
            now,
            j as u32,
            &self.plan.ops[j],
            self.op_unit[j],
            self.in_flight > 0,
            &mut self.dram,
        )?;
        self.op_start = start;
        if let Some(done) = done {
            follow.push((done, Ev::OpDone { op: j as u32 }));
        }
        Ok(())
    }
}

impl<B: Backend> Handler for Pipeline<'_, B> {
    type Event = Ev;

    fn handle(&mut self, now: Ps, ev: Ev, follow: &mut Vec<(Ps, Ev)>) -> Result<(), SimError> {
        match ev {
            Ev::TokenStart => self.begin_token(now, follow),
            Ev::IoDone { read } => {
                self.in_flight -= 1;
                if self.in_flight == 0 {
                    let busy = now.checked_sub(self.busy_since)?;
                    self.cur.flash_busy = self.cur.flash_busy.checked_add(busy)?;
                }
                let r = &self.plan.reads[read as usize];
                self.pending[r.needed_by as usize] -= 1;
                if self.cfg.record_activity {
                    self.activity.push(Activity::Read {
                        token: self.token,
                        issued: self.read_issued[read as usize],
                        done: now,
                        bytes: r.extent.bytes,
                    });
                }
                self.issue(now, follow)?;
                self.start_op(now, follow)
            }
            Ev::OpDone { op } => {
                let j = op as usize;
                if self.cfg.record_activity {
                    self.activity.push(Activity::Op {
                        token: self.token,
                        op,
                        unit: self.op_unit[j],
                        start: self.op_start,
                        done: now,
                    });
                }
                let busy = now.checked_sub(self.op_start)?;
                self.cur.compute_busy = self.cur.compute_busy.checked_add(busy)?;
                self.finished[j] = true;
                self.running = false;
                self.dram.free(self.buffers[j])?;
                self.buffers[j] = 0;
                if self.ctx.op_weights {
                    for e in std::mem::take(&mut self.buffer_extents[j]) {
                        self.backend.let_go(e)?;
                    }
                }
                self.evict(IssueAfter::OpDone(op))?;
                self.next_op += 1;
                self.ready_at = now;
                if self.next_op == self.plan.ops.len() {
                    self.cur.wall = now.checked_sub(self.cur.start)?;
                    self.stats.push(self.cur);
                    self.token += 1;
                    if self.token < self.tokens_total {
                        follow.push((now, Ev::TokenStart));
                    }
                    return Ok(());
                }
                self.issue(now, follow)?;
                self.start_op(now, follow)
            }
        }
    }
}

impl<'a, B: Backend> Pipeline<'a, B> {
    /// A pipeline for one decode step per entry of `token_ids` (the input token of each) of
    /// `policy` (already set up, as `setup` says) on `backend`, with its DRAM holding the
    /// resident weights, reservations and the prompt's KV cache.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        policy: &'a mut dyn Policy,
        setup: PolicySetup,
        ctx: PolicyContext<'a>,
        backend: B,
        dram_bus_bytes_per_s: u64,
        cfg: ExecConfig,
        token_ids: Vec<u32>,
    ) -> Result<Self, SimError> {
        if cfg.io_queue_depth == 0 {
            return Err(SimError::Plan("io_queue_depth must be at least 1".into()));
        }
        let kv_bytes_per_token = ctx.shape.kv_bytes_per_token(ctx.kv_bytes_per_value);
        let mut dram = Dram::new(ctx.dram_budget_bytes, dram_bus_bytes_per_s);
        dram.alloc(setup.resident_weight_bytes())?;
        dram.alloc(setup.reserved_bytes)?;
        dram.alloc(kv_bytes_per_token * ctx.prompt_tokens as u64)?;
        let tokens = token_ids.len();
        Ok(Pipeline {
            policy,
            ctx,
            backend,
            dram,
            cfg,
            tokens_total: tokens as u32,
            kv_bytes_per_token,
            token_ids,
            token: 0,
            plan: TokenPlan::default(),
            op_unit: Vec::new(),
            pending: Vec::new(),
            buffers: Vec::new(),
            buffer_extents: Vec::new(),
            changed_bytes: (0, 0),
            evict_bytes: Vec::new(),
            change_at: Vec::new(),
            changes: Vec::new(),
            started: Vec::new(),
            finished: Vec::new(),
            next_read: 0,
            demand: Vec::new(),
            prefetch: Vec::new(),
            next_demand: 0,
            next_prefetch: 0,
            in_flight: 0,
            next_op: 0,
            running: false,
            ready_at: Ps::ZERO,
            op_start: Ps::ZERO,
            busy_since: Ps::ZERO,
            read_issued: Vec::new(),
            cur: TokenStats::default(),
            stats: Vec::with_capacity(tokens),
            masks: Vec::new(),
            activity: Vec::new(),
            resident_weight_bytes: setup.resident_weight_bytes(),
        })
    }

    /// Whether every token has finished.
    pub fn done(&self) -> bool {
        self.token >= self.tokens_total
    }

    /// Bytes of the plans' DRAM changes ([`TokenPlan::dram_changes`]) made so far: evicted,
    /// admitted (listed only when the context lists op weights).
    pub fn dram_changes_bytes(&self) -> (u64, u64) {
        self.changed_bytes
    }

    /// The backend (to read what it recorded).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (to drive a real one).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Tokens finished so far.
    pub fn tokens_done(&self) -> usize {
        self.stats.len()
    }

    /// The masks of each finished token (when the context records them).
    pub fn masks(&self) -> &[Vec<flashsim_policies::AppliedMask>] {
        &self.masks
    }

    /// The statistics, once the event loop has run dry after `events` events ending at `end`;
    /// a token left unfinished is a deadlock.
    pub fn finish(self, events: u64, end: Ps) -> Result<(RunStats, Vec<Activity>), SimError> {
        if self.token < self.tokens_total {
            return Err(SimError::Deadlock(format!(
                "token {} stopped at op {} of {} with read {} of {} next and {} in flight",
                self.token,
                self.next_op,
                self.plan.ops.len(),
                self.next_read,
                self.plan.reads.len(),
                self.in_flight
            )));
        }
        Ok((
            RunStats {
                tokens: self.stats,
                masks: self.masks,
                dram_peak_bytes: self.dram.peak_bytes(),
                resident_weight_bytes: self.resident_weight_bytes,
                events,
                end,
            },
            self.activity,
        ))
    }
}

/// Simulates one decode step per entry of `token_ids` (the input token of each) of `policy`
/// (already set up, as `setup` says) on `device` (taken fresh, idle at time zero).
pub fn simulate(
    policy: &mut dyn Policy,
    setup: PolicySetup,
    ctx: PolicyContext<'_>,
    device: &Device,
    cfg: ExecConfig,
    token_ids: Vec<u32>,
) -> Result<(RunStats, Vec<Activity>), SimError> {
    let mut p = Pipeline::new(
        policy,
        setup,
        ctx,
        Simulated(device.clone()),
        device.dram_bus_bytes_per_s,
        cfg,
        token_ids,
    )?;
    let mut engine = Engine::new();
    if !p.done() {
        engine.schedule(Ps::ZERO, Ev::TokenStart)?;
    }
    let end = engine.run(&mut p)?;
    p.finish(engine.processed(), end)
}
