//! Runs an experiment: for each point, load the device and model, build the policy, check the
//! DRAM budget, simulate, and summarize into [`Metrics`].

use crate::device::{Device, GIB};
use crate::executor::{simulate, Activity, ExecConfig, RunStats};
use crate::experiment::{Experiment, Point};
use crate::paths;
use crate::time::Ps;
use anyhow::Context;
use flashsim_policies::layout::WeightLayout;
use flashsim_policies::{policy, Policy, PolicyContext, PolicySetup};
use flashsim_workloads::shape::ModelShape;
use flashsim_workloads::toml_source::ConfigError;
use flashsim_workloads::trace::stats::TraceView;
use flashsim_workloads::trace::Trace;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Devices and models loaded once per experiment.
#[derive(Default)]
pub struct Cache {
    devices: BTreeMap<String, Device>,
    models: BTreeMap<String, ModelShape>,
    traces: BTreeMap<String, Arc<Trace>>,
    weights: BTreeMap<String, Option<Arc<flashsim_workloads::checkpoint::Weights>>>,
}

impl Cache {
    /// The checkpoint a recorded trace came from, found in the shared models folder by the
    /// model's name and checked against the SHA-256 in the trace's metadata.
    fn quality_weights(
        &mut self,
        t: &Trace,
    ) -> Option<Arc<flashsim_workloads::checkpoint::Weights>> {
        if t.meta.get("source").map(String::as_str) != Some("recorded") {
            return None;
        }
        let sha = t.meta.get("checkpoint_sha256")?;
        if let Some(w) = self.weights.get(sha) {
            return w.clone();
        }
        let found = flashsim_workloads::shared_models_dir()
            .map(|d| d.join(format!("{}.bin", t.shape.name)))
            .filter(|p| flashsim_workloads::checkpoint::sha256_file(p).ok().as_ref() == Some(sha))
            .and_then(|p| flashsim_workloads::checkpoint::llama2c::load(p).ok())
            .map(Arc::new);
        self.weights.insert(sha.clone(), found.clone());
        found
    }
}

/// A point ready to simulate: everything loaded and checked.
pub struct Prepared {
    pub device: Device,
    pub shape: ModelShape,
    pub layout: WeightLayout,
    pub policy: Box<dyn Policy>,
    pub setup: PolicySetup,
    pub dram_budget_bytes: u64,
    pub kv_cache_bytes: u64,
    pub point: Point,
    /// The activation trace, when the experiment names one.
    pub trace: Option<Arc<Trace>>,
    /// The weights the trace was recorded from, when flashsim can run them: masks are then
    /// scored for quality (KL divergence and top-1 agreement against the dense model).
    pub quality: Option<Arc<flashsim_workloads::checkpoint::Weights>>,
}

impl Prepared {
    /// What the policy derived, as `name=value` pairs separated by spaces.
    pub fn derived(&self) -> String {
        self.policy
            .derived()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The input token of generated token `i`: the trace's (wrapping), or a seeded hash when
    /// there is no trace.
    pub fn token_id(&self, i: u32) -> u32 {
        match &self.trace {
            Some(t) => t.token(i as usize % t.tokens()),
            None => {
                let c = &self.point.config;
                (splitmix64(c.seed ^ (i as u64).wrapping_mul(0x9E37_79B9))
                    % self.shape.vocab as u64) as u32
            }
        }
    }

    /// Simulates the point; with `record`, also returns every read and op.
    pub fn simulate(
        &mut self,
        record: bool,
    ) -> Result<(RunStats, Vec<Activity>), crate::error::SimError> {
        let record_masks = self.quality.is_some();
        let r = self.run_parts(record, record_masks, false);
        simulate(r.policy, r.setup, r.ctx, r.device, r.cfg, r.ids)
    }

    /// Each token's ops as the policy plans them for the real backend (each listing the
    /// weight-file extents it multiplies by), token by token as a run asks for them: what
    /// `flashsim kernels` times without the reads. Call it on a freshly prepared point.
    pub fn token_ops(&mut self) -> Result<Vec<Vec<flashsim_policies::plan::Op>>, crate::SimError> {
        let r = self.run_parts(false, false, true);
        (0..r.ids.len())
            .map(|i| {
                let plan = crate::executor::plan_token(r.policy, &r.ctx, i as u32, r.ids[i])?;
                Ok(plan.ops)
            })
            .collect()
    }

    /// What every run of this point hands the pipeline, borrowed apart so that the policy can
    /// be mutable while the rest is read (`op_weights`: plans list each op's weights, for the
    /// real backend).
    fn run_parts(
        &mut self,
        record_activity: bool,
        record_masks: bool,
        op_weights: bool,
    ) -> RunParts<'_> {
        let ids = (0..self.point.config.tokens)
            .map(|i| self.token_id(i))
            .collect();
        let Prepared {
            device,
            shape,
            layout,
            policy,
            setup,
            dram_budget_bytes,
            kv_cache_bytes,
            point,
            trace,
            ..
        } = self;
        RunParts {
            policy: policy.as_mut(),
            setup: setup.clone(),
            ctx: PolicyContext {
                record_masks,
                op_weights,
                ..context(
                    shape,
                    layout,
                    *dram_budget_bytes,
                    *kv_cache_bytes,
                    point,
                    trace.as_deref(),
                )
            },
            cfg: ExecConfig {
                io_queue_depth: point.config.io_queue_depth,
                record_activity,
            },
            ids,
            device,
        }
    }
}

/// See [`Prepared::run_parts`].
struct RunParts<'a> {
    policy: &'a mut dyn Policy,
    setup: PolicySetup,
    ctx: PolicyContext<'a>,
    cfg: ExecConfig,
    /// The input token of each step.
    ids: Vec<u32>,
    device: &'a Device,
}

impl<'a> RunParts<'a> {
    /// The pipeline on the real backend reading `weights` (`verify`: only each read's planned
    /// bytes reach DRAM, checksummed), with `resident` loaded before it starts.
    fn real_pipeline(
        self,
        weights: &std::path::Path,
        verify: bool,
        copy_bytes: Option<u64>,
    ) -> anyhow::Result<crate::executor::Pipeline<'a, crate::real::Real>> {
        let units = self.device.units.iter().map(|u| u.name.clone()).collect();
        let mut backend = crate::real::Real::new(
            weights,
            self.cfg.io_queue_depth,
            self.device.read_engine,
            units,
            verify,
            crate::real::Memory::Weights { copy_bytes },
        )?;
        // Verifying, the resident weights are loaded first, so that what DRAM holds is
        // complete; timed, the kernels load them at first use (the warm-up tokens).
        if verify {
            for &e in &self.setup.resident {
                backend.load(e)?;
            }
        }
        Ok(crate::executor::Pipeline::new(
            self.policy,
            self.setup,
            self.ctx,
            backend,
            self.device.dram_bus_bytes_per_s,
            self.cfg,
            self.ids,
        )?)
    }
}

/// What a run on the real backend measured and did.
#[derive(Debug)]
pub struct RealRun {
    pub stats: RunStats,
    /// Every read issued, in issue order.
    pub reads: Vec<crate::real::ReadRecord>,
    /// Bytes of op weights the kernels computed on (one pass each), over the run.
    pub computed_bytes: u64,
    /// Bytes of weight pages the compute thread loaded because no read had brought them in
    /// (the policy's resident weights, at their first use).
    pub loaded_bytes: u64,
    /// With `verify`, the most bytes of the weight file the plans held in DRAM at once
    /// (resident weights, loaded first in such a run, buffers, retained reads and cache
    /// fills, each byte once).
    pub held_peak_bytes: Option<u64>,
    /// Each op's kernel, in the order they ran.
    pub kernels: Vec<crate::real::KernelTime>,
}

impl Prepared {
    /// Runs the point on the real backend: O_DIRECT reads of `weights` (a file at least
    /// `layout.file_bytes` long) and real kernels on the weights each op lists, driven by the
    /// same pipeline as the simulator; returns the measured statistics and every read issued
    /// (`verify`: with the checksum of the bytes each read brought in). With `copy_bytes`, the
    /// file holds copies of the weights that far apart and token `t` reads copy `t mod copies`
    /// ([`crate::real::Memory::Weights`]; DRAM holds one copy).
    pub fn execute_real(
        &mut self,
        weights: &std::path::Path,
        verify: bool,
        copy_bytes: Option<u64>,
    ) -> anyhow::Result<RealRun> {
        use std::sync::atomic::Ordering;
        let mut pipe = self
            .run_parts(false, false, true)
            .real_pipeline(weights, verify, copy_bytes)?;
        let (events, end) = drive_real(&mut pipe, |_| Ok(()))?;
        let reads = std::mem::take(&mut pipe.backend_mut().reads);
        let held_peak_bytes = pipe.backend().held_bytes().map(|(_, peak)| peak);
        pipe.backend_mut().shutdown()?;
        let k = pipe.backend().kernel_counters();
        let (computed_bytes, loaded_bytes) = (
            k.computed.load(Ordering::Relaxed),
            k.loaded.load(Ordering::Relaxed),
        );
        let kernels = std::mem::take(&mut *k.times.lock().unwrap_or_else(|e| e.into_inner()));
        let (stats, _) = pipe.finish(events, end)?;
        Ok(RealRun {
            stats,
            reads,
            computed_bytes,
            loaded_bytes,
            held_peak_bytes,
            kernels,
        })
    }
}

impl Prepared {
    /// Runs the point on the real backend and checks what it computes: after each token, the
    /// model is evaluated with the weights the token's ops listed, as each op found them in
    /// the backend's DRAM image of the file when it started (the policy's resident weights
    /// loaded at start, as a runtime loads them; every other byte only as the plans' reads
    /// brought it in, zero before, and zero again once the plan let go of it: a buffer after
    /// its last op, an evicted cache entry), under the token's masks, and compared with the
    /// reference model under the same masks. A weight an op needs but does not list, or lists
    /// after its bytes were let go, is zero there. Returns, per token, the largest absolute
    /// difference of the logits, with what the policy's cache did and the most bytes DRAM
    /// held. `weights` must hold the checkpoint's own
    /// weights in this point's layout ([`crate::real::model_image`]); needs the checkpoint
    /// (a trace recorded from a model flashsim can run).
    pub fn check_real_logits(&mut self, weights: &std::path::Path) -> anyhow::Result<RealLogits> {
        let reference = self.quality.clone().ok_or_else(|| {
            anyhow::anyhow!("checking logits needs the checkpoint the trace was recorded from")
        })?;
        let r = self.run_parts(false, true, true);
        let (layout, shape, ids) = (r.ctx.layout, r.ctx.shape, r.ids.clone());
        let mut pipe = r.real_pipeline(weights, true, None)?;
        let mut reference_model = flashsim_workloads::model::Model::new((*reference).clone());
        let mut real_model = flashsim_workloads::model::Model::new((*reference).clone());
        let mut diffs = Vec::new();
        drive_real(&mut pipe, |pipe| {
            while diffs.len() < pipe.tokens_done() {
                let k = diffs.len();
                let masks = &pipe.masks()[k];
                let image = pipe.backend().seen().expect("verifying");
                real_model.weights =
                    crate::real::weights_from_image(layout, shape, image, &reference)?;
                let mut m = RecordedMasks {
                    by_pos: (0..=k)
                        .map(|p| (p == k).then_some(masks.as_slice()))
                        .collect(),
                };
                let want = reference_model.forward(ids[k], k, &mut m, None);
                let got = real_model.forward(ids[k], k, &mut m, None);
                let d = want
                    .iter()
                    .zip(&got)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                diffs.push(if got.iter().all(|x| x.is_finite()) {
                    d
                } else {
                    f32::INFINITY
                });
            }
            Ok(())
        })?;
        pipe.backend_mut().shutdown()?;
        let (evicted_bytes, admitted_bytes) = pipe.dram_changes_bytes();
        Ok(RealLogits {
            diffs,
            evicted_bytes,
            admitted_bytes,
            held_peak_bytes: pipe.backend().held_bytes().expect("verifying").1,
        })
    }
}

/// What [`Prepared::check_real_logits`] found.
#[derive(Debug)]
pub struct RealLogits {
    /// Per token, the largest absolute difference of the logits.
    pub diffs: Vec<f32>,
    /// Bytes the policy evicted and admitted by extent (its cache at work), over the run.
    pub evicted_bytes: u64,
    pub admitted_bytes: u64,
    /// The most bytes of the weight file DRAM held at once.
    pub held_peak_bytes: u64,
}

/// Drives `pipe` on the real backend until its tokens are done: events are handled as the
/// backend reports them (what they schedule at the same instant, at once), and `after` sees the
/// pipeline after each. Returns the number of events and the time of the last.
fn drive_real(
    pipe: &mut crate::executor::Pipeline<'_, crate::real::Real>,
    mut after: impl FnMut(&crate::executor::Pipeline<'_, crate::real::Real>) -> anyhow::Result<()>,
) -> anyhow::Result<(u64, Ps)> {
    use crate::engine::Handler;
    use crate::executor::Ev;
    pipe.backend_mut().start_clock();
    let mut queue = std::collections::VecDeque::new();
    if !pipe.done() {
        queue.push_back((Ps::ZERO, Ev::TokenStart));
    }
    let mut follow = Vec::new();
    let (mut events, mut end) = (0u64, Ps::ZERO);
    loop {
        while let Some((t, e)) = queue.pop_front() {
            events += 1;
            end = t;
            pipe.handle(t, e, &mut follow)?;
            queue.extend(follow.drain(..));
            after(pipe)?;
        }
        if pipe.done() {
            break;
        }
        queue.push_back(pipe.backend_mut().next_completion()?);
    }
    Ok((events, end))
}

/// The policy context of `point` (masks and op weights not asked for).
fn context<'a>(
    shape: &'a ModelShape,
    layout: &'a WeightLayout,
    dram_budget_bytes: u64,
    kv_cache_bytes: u64,
    point: &Point,
    trace: Option<&'a Trace>,
) -> PolicyContext<'a> {
    let c = &point.config;
    PolicyContext {
        shape,
        layout,
        dram_budget_bytes,
        kv_cache_bytes,
        kv_bytes_per_value: c.kv_bytes_per_value,
        prompt_tokens: c.prompt_tokens,
        tokens: c.tokens,
        max_read_bytes: c.max_read_kib * 1024,
        trace: trace.map(|t| t as &dyn TraceView),
        record_masks: false,
        op_weights: false,
    }
}

/// The synthetic trace of a point: generated once per content (shape, parameters, tokens,
/// seed) into the cache folder, then reused.
fn synthetic_trace(
    src: &flashsim_workloads::TomlSource,
    c: &crate::experiment::PointConfig,
    shape: &ModelShape,
) -> Result<std::path::PathBuf, ConfigError> {
    use flashsim_workloads::trace::synth::{self, SynthConfig};
    let params = c.synthetic.unwrap_or_default();
    let key = format!(
        "{}|{}|{}|{}",
        serde_json::to_string(shape).expect("json"),
        serde_json::to_string(&params).expect("json"),
        c.tokens,
        c.seed
    );
    let hash = splitmix64(fnv1a(key.as_bytes()));
    let dir = match std::env::var_os("FLASHSIM_CACHE") {
        Some(d) => std::path::PathBuf::from(d),
        None => paths::config_dirs(&src.path)[0].join("../results/.trace-cache"),
    };
    let path = dir.join(format!("synthetic-{}-{hash:016x}.safetensors", shape.name));
    if !path.is_file() {
        std::fs::create_dir_all(&dir)
            .map_err(|e| src.invalid("trace", format!("cannot create {}: {e}", dir.display())))?;
        let cfg = SynthConfig {
            params,
            shape: shape.clone(),
            sequences: 1,
            tokens_per_sequence: c.tokens as usize,
            seed: c.seed,
        };
        synth::generate(&cfg, &path).map_err(|e| src.invalid("synthetic", e.to_string()))?;
    }
    Ok(path)
}

/// FNV-1a (64-bit) of `bytes`: a fixed hash for content keys (cache names, config hashes).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// SplitMix64: a small, fixed, well-mixed hash for deterministic per-point choices.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Loads and checks one point.
pub fn prepare(
    exp: &Experiment,
    point: &Point,
    cache: &mut Cache,
) -> Result<Prepared, ConfigError> {
    let src = &exp.src;
    let c = &point.config;
    let dpath = paths::resolve(src, "device", "devices", &c.device)?;
    let key = dpath.display().to_string();
    if !cache.devices.contains_key(&key) {
        cache.devices.insert(key.clone(), Device::load(&dpath)?);
    }
    let device = cache.devices[&key].clone();
    let mpath = paths::resolve(src, "model", "models", &c.model)?;
    let key = mpath.display().to_string();
    if !cache.models.contains_key(&key) {
        cache.models.insert(key.clone(), ModelShape::load(&mpath)?);
    }
    let shape = cache.models[&key].clone();

    let trace = if c.trace == "none" {
        None
    } else {
        let tpath = if c.trace == "synthetic" {
            synthetic_trace(src, c, &shape)?
        } else {
            paths::resolve_trace(src, &c.trace)?
        };
        let key = tpath.display().to_string();
        if !cache.traces.contains_key(&key) {
            let t = Trace::open(&tpath).map_err(|e| src.invalid("trace", e.to_string()))?;
            cache.traces.insert(key.clone(), Arc::new(t));
        }
        let t = cache.traces[&key].clone();
        let (a, b) = (&t.shape, &shape);
        if (
            a.layers,
            a.hidden,
            a.intermediate,
            a.heads,
            a.kv_heads,
            a.vocab,
        ) != (
            b.layers,
            b.hidden,
            b.intermediate,
            b.heads,
            b.kv_heads,
            b.vocab,
        ) {
            return Err(src.invalid(
                "trace",
                format!(
                    "trace `{}` was taken from a model of {} layers x {} hidden x {} neurons, not `{}` ({} x {} x {})",
                    c.trace, a.layers, a.hidden, a.intermediate, b.name, b.layers, b.hidden, b.intermediate
                ),
            ));
        }
        if t.tokens() == 0 {
            return Err(src.invalid("trace", format!("trace `{}` holds no tokens", c.trace)));
        }
        Some(t)
    };
    let budget = (c.dram_budget_gib * GIB).round() as u64;
    if budget > device.dram_capacity_bytes {
        return Err(src.invalid(
            "dram_budget_gib",
            format!(
                "{} GiB exceeds the {:.1} GiB of DRAM of device `{}`",
                c.dram_budget_gib,
                device.dram_capacity_bytes as f64 / GIB,
                device.name
            ),
        ));
    }
    let kv_cache_bytes =
        shape.kv_bytes_per_token(c.kv_bytes_per_value) * (c.prompt_tokens as u64 + c.tokens as u64);
    let entry = policy::find(&c.policy).expect("validated on load");
    let mut pol = (entry.build)(src, point.policy_params.clone(), &["policies", entry.name])?;
    let rates = crate::device::Rates {
        device: &device,
        io_queue_depth: c.io_queue_depth,
    };
    pol.size(&flashsim_policies::SizingContext {
        shape: &shape,
        dram_budget_bytes: budget,
        kv_cache_bytes,
        rates: Some(&rates),
    })
    .map_err(|e| src.invalid(&format!("policies.{}", entry.name), e.to_string()))?;
    let layout = pol.layout(&shape, c.alignment_kib * 1024);
    let ctx = context(
        &shape,
        &layout,
        budget,
        kv_cache_bytes,
        point,
        trace.as_deref(),
    );
    let setup = pol
        .setup(&ctx)
        .map_err(|e| src.invalid("dram_budget_gib", e.to_string()))?;
    let needed = setup.resident_weight_bytes()
        + setup.peak_buffer_bytes
        + setup.reserved_bytes
        + kv_cache_bytes;
    if needed > budget {
        return Err(src.invalid(
            "dram_budget_gib",
            format!(
                "{} GiB is smaller than what policy `{}` needs: resident weights {:.3} GiB + streaming buffers and caches {:.3} GiB + KV cache {:.3} GiB = {:.3} GiB",
                c.dram_budget_gib,
                entry.name,
                setup.resident_weight_bytes() as f64 / GIB,
                (setup.peak_buffer_bytes + setup.reserved_bytes) as f64 / GIB,
                kv_cache_bytes as f64 / GIB,
                needed as f64 / GIB
            ),
        ));
    }
    Ok(Prepared {
        device,
        shape,
        layout,
        policy: pol,
        setup,
        dram_budget_bytes: budget,
        kv_cache_bytes,
        point: point.clone(),
        quality: trace.as_ref().and_then(|t| cache.quality_weights(t)),
        trace,
    })
}

/// The summary of one point, averaged over its generated tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, serde::Deserialize)]
pub struct Metrics {
    pub tokens_per_s: f64,
    pub ms_per_token: f64,
    pub flash_io_ms_per_token: f64,
    pub compute_ms_per_token: f64,
    pub stall_ms_per_token: f64,
    pub flash_bytes_per_token: f64,
    pub flash_reads_per_token: f64,
    pub mean_read_bytes: f64,
    pub flash_throughput_gb_per_s: f64,
    pub dram_peak_bytes: u64,
    pub dram_resident_weight_bytes: u64,
    /// Mean share of the FFN activation mass the masks keep (`None`: the policy masks nothing).
    pub retained_mass: Option<f64>,
    /// Cache hits / lookups over the run (`None`: the policy has no cache).
    pub cache_hit_rate: Option<f64>,
    /// Mean KL(dense || masked) of the next-token distribution, nats, over the trace positions
    /// the run covered (`None`: no checkpoint to score with).
    pub kl_divergence: Option<f64>,
    /// Share of those positions where masked and dense agree on the most likely token.
    pub top1_agreement: Option<f64>,
}

impl Metrics {
    /// Averages over the tokens after the first `warmup`.
    pub fn from_stats(s: &RunStats, warmup: usize) -> Self {
        let measured = RunStats {
            tokens: s.tokens[warmup.min(s.tokens.len())..].to_vec(),
            ..s.clone()
        };
        let s = &measured;
        let n = s.tokens.len().max(1) as f64;
        let sum = |f: fn(&crate::executor::TokenStats) -> Ps| -> Ps {
            Ps(s.tokens.iter().map(|t| f(t).0).sum())
        };
        let wall = sum(|t| t.wall);
        let busy = sum(|t| t.flash_busy);
        let bytes: u64 = s.tokens.iter().map(|t| t.read_bytes).sum();
        let reads: u64 = s.tokens.iter().map(|t| t.reads).sum();
        Metrics {
            tokens_per_s: if wall.0 > 0 { n / wall.as_s() } else { 0.0 },
            ms_per_token: wall.as_ms() / n,
            flash_io_ms_per_token: busy.as_ms() / n,
            compute_ms_per_token: sum(|t| t.compute_busy).as_ms() / n,
            stall_ms_per_token: sum(|t| t.stall).as_ms() / n,
            flash_bytes_per_token: bytes as f64 / n,
            flash_reads_per_token: reads as f64 / n,
            mean_read_bytes: if reads > 0 {
                bytes as f64 / reads as f64
            } else {
                0.0
            },
            flash_throughput_gb_per_s: if busy.0 > 0 {
                bytes as f64 / busy.as_s() / 1e9
            } else {
                0.0
            },
            dram_peak_bytes: s.dram_peak_bytes,
            dram_resident_weight_bytes: s.resident_weight_bytes,
            retained_mass: {
                let v: Vec<f64> = s.tokens.iter().filter_map(|t| t.retained_mass).collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            },
            kl_divergence: None,
            top1_agreement: None,
            cache_hit_rate: {
                let (l, h): (u64, u64) = s
                    .tokens
                    .iter()
                    .fold((0, 0), |a, t| (a.0 + t.cache_lookups, a.1 + t.cache_hits));
                (l > 0).then(|| h as f64 / l as f64)
            },
        }
    }
}

/// One finished point.
#[derive(Debug, Clone)]
pub struct PointResult {
    pub point: Point,
    pub metrics: Metrics,
    /// What the policy derived (`name=value` separated by spaces; empty when nothing).
    pub derived: String,
    /// Why the point could not run (its DRAM budget cannot hold what the policy needs); its
    /// metrics are then empty in the results.
    pub infeasible: Option<String>,
}

/// Runs one point, reusing `cache`'s devices, models and traces.
pub fn run_point(
    exp: &Experiment,
    point: &Point,
    cache: &mut Cache,
) -> anyhow::Result<PointResult> {
    let mut p = prepare(exp, point, cache)?;
    let (stats, _) = p.simulate(false).with_context(|| {
        format!(
            "{}: point {} ({})",
            exp.src.path.display(),
            point.index,
            describe(point)
        )
    })?;
    let mut metrics = Metrics::from_stats(&stats, point.config.warmup_tokens as usize);
    if let (Some(w), Some(t)) = (&p.quality, &p.trace) {
        let q = score_masks(w, t, &stats.masks);
        metrics.kl_divergence = Some(q.kl_mean);
        metrics.top1_agreement = Some(q.top1_agreement);
    }
    Ok(PointResult {
        point: point.clone(),
        metrics,
        derived: p.derived(),
        infeasible: None,
    })
}

/// [`prepare`], or `None` when the point's DRAM budget is too small for its policy (said on
/// `progress`, as "point N skipped: infeasible (why)"): what the commands that measure every
/// feasible point of an experiment (`replay`, `kernels`) go on from. Any other error is
/// returned, naming the point.
pub fn prepare_or_skip(
    exp: &Experiment,
    point: &Point,
    cache: &mut Cache,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Option<Prepared>> {
    match prepare(exp, point, cache).map_err(anyhow::Error::from) {
        Ok(p) => Ok(Some(p)),
        Err(e) => match infeasible(&e) {
            Some(why) => {
                progress(&format!(
                    "point {} skipped: infeasible ({why})",
                    point.index
                ));
                Ok(None)
            }
            None => Err(e.context(format!("point {}", point.index))),
        },
    }
}

/// Like [`run_point`], but a point whose DRAM budget is too small for its policy becomes an
/// infeasible result (a sweep records it and goes on) instead of an error.
pub fn run_point_or_infeasible(
    exp: &Experiment,
    point: &Point,
    cache: &mut Cache,
) -> anyhow::Result<PointResult> {
    match run_point(exp, point, cache) {
        Err(e) => match infeasible(&e) {
            Some(why) => Ok(PointResult {
                point: point.clone(),
                metrics: Metrics::default(),
                derived: String::new(),
                infeasible: Some(why),
            }),
            None => Err(e),
        },
        ok => ok,
    }
}

/// Why `e` means the point's DRAM budget is too small for its policy (the budget refused when
/// the point is set up, or outgrown by its plans during the run), or `None` for any other error.
pub fn infeasible(e: &anyhow::Error) -> Option<String> {
    match (
        e.downcast_ref::<ConfigError>(),
        e.downcast_ref::<crate::SimError>(),
    ) {
        (Some(ce @ ConfigError::Invalid { key: Some(k), .. }), _) if k == "dram_budget_gib" => {
            Some(ce.to_string())
        }
        // The policy's plans outgrew the budget its setup accepted.
        (_, Some(se @ crate::SimError::DramBudgetExceeded { .. })) => {
            Some(format!("during the run: {se}"))
        }
        _ => None,
    }
}

/// Runs every point of `exp` in order, in memory (no results folder): the library's way; the
/// `flashsim run` command uses [`crate::sweep::run_sweep`].
pub fn run_experiment(
    exp: &Experiment,
    mut progress: impl FnMut(&PointResult),
) -> anyhow::Result<Vec<PointResult>> {
    let mut cache = Cache::default();
    let mut out = Vec::with_capacity(exp.points.len());
    for point in &exp.points {
        let r = run_point(exp, point, &mut cache)?;
        progress(&r);
        out.push(r);
    }
    Ok(out)
}

/// Makes sure every trace the experiment names exists (generating synthetic ones once, in
/// order, before any parallel work) and returns their paths, each once.
pub fn materialize_traces(exp: &Experiment) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut cache = Cache::default();
    let mut out: Vec<std::path::PathBuf> = Vec::new();
    for point in &exp.points {
        let c = &point.config;
        let src = &exp.src;
        let path = match c.trace.as_str() {
            "none" => continue,
            "synthetic" => {
                let mpath = paths::resolve(src, "model", "models", &c.model)?;
                let key = mpath.display().to_string();
                if !cache.models.contains_key(&key) {
                    cache.models.insert(key.clone(), ModelShape::load(&mpath)?);
                }
                synthetic_trace(src, c, &cache.models[&key])?
            }
            name => paths::resolve_trace(src, name)?,
        };
        if !out.contains(&path) {
            out.push(path);
        }
    }
    Ok(out)
}

/// `policy=…, key=value, …` for messages.
pub fn describe(point: &Point) -> String {
    let mut parts = vec![format!("policy={}", point.config.policy)];
    for (k, v) in &point.axis_values {
        if k != "policy" {
            parts.push(format!("{k}={v}"));
        }
    }
    parts.join(", ")
}

/// Applies recorded masks during masked execution: generated token `i` is trace token `i mod T`;
/// a trace position with no recorded mask runs densely.
struct RecordedMasks<'a> {
    /// Masks of the trace token at each position of the sequence being scored.
    by_pos: Vec<Option<&'a [flashsim_policies::AppliedMask]>>,
}

impl flashsim_workloads::model::Masker for RecordedMasks<'_> {
    fn mask(
        &mut self,
        pos: usize,
        layer: usize,
        site: flashsim_workloads::model::Site,
        x: &[f32],
    ) -> Option<Vec<bool>> {
        let masks = self.by_pos.get(pos).copied().flatten()?;
        let m = masks
            .iter()
            .find(|m| m.layer as usize == layer && m.site == site)?;
        let mut keep = vec![false; x.len()];
        for &i in &m.keep {
            keep[i as usize] = true;
        }
        Some(keep)
    }
}

/// Quality of the recorded masks: each trace sequence the run touched is replayed, teacher-
/// forced, dense against masked; the figures are averaged over positions.
pub fn score_masks(
    w: &flashsim_workloads::checkpoint::Weights,
    trace: &Trace,
    masks: &[Vec<flashsim_policies::AppliedMask>],
) -> flashsim_workloads::quality::Quality {
    let covered = masks.len().min(trace.tokens());
    let (mut kl, mut agree, mut n) = (0.0, 0.0, 0usize);
    let (mut nll_d, mut nll_m) = (0.0, 0.0);
    for seq in trace.sequences() {
        let end = seq.end.min(covered);
        if end <= seq.start + 1 {
            continue;
        }
        let tokens: Vec<u32> = (seq.start..end).map(|t| trace.token(t)).collect();
        let mut m = RecordedMasks {
            by_pos: (seq.start..end)
                .map(|t| Some(masks[t].as_slice()))
                .collect(),
        };
        let q = flashsim_workloads::quality::score(w, &tokens, &mut m);
        let k = q.positions as f64;
        kl += q.kl_mean * k;
        agree += q.top1_agreement * k;
        nll_d += q.perplexity_dense.ln() * k;
        nll_m += q.perplexity_masked.ln() * k;
        n += q.positions;
    }
    let nf = n.max(1) as f64;
    flashsim_workloads::quality::Quality {
        kl_mean: kl / nf,
        top1_agreement: agree / nf,
        perplexity_dense: (nll_d / nf).exp(),
        perplexity_masked: (nll_m / nf).exp(),
        positions: n,
    }
}
