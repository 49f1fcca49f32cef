//! `parametric` flash: per-request overhead `T0`, per-request transfer rate `B`, a device (link)
//! maximum `B_max`, a number of parallel units, and optionally a controller command rate.
//!
//! Timeline rules (deterministic):
//! 1. The request takes the parallel unit that frees first:
//!    `start = max(now, unit_free)`.
//! 2. With `max_kiops`, the controller handles one command at a time for `1/IOPS`:
//!    `start = max(start, controller_free)`, `controller_free = start + 1/IOPS`
//!    (`1/IOPS ≤ T0` is required, so an idle device keeps its QD1 latency).
//! 3. The unit works for `T0 + S/B`; its data crosses the shared link at `B_max`, in the last
//!    `S/B_max` of that time if the link is free then, otherwise in the first free stretch
//!    after it ([`Link`]): requests complete out of order, a short one waiting for a longer
//!    one submitted before it only while the link carries that one's data (until 2026-11 the
//!    link carried data in submission order, `done = max(start + T0 + S/B, link_free +
//!    S/B_max)`, which held every short read of a mix of sizes behind the longer ones; see
//!    `flash_measured.rs` for what that cost on a real disk; the paper reproductions' reads
//!    never overtook one another, so their results did not change).
//!
//! Hence an idle device serves a request in exactly `T0 + S/B`, `Q` requests in flight give
//! `Q·S/(T0 + S/B)`, and throughput never exceeds `B_max`: the knee sits near `S* = T0·B`.

use super::flash::{positive, Flash, FlashEntry, Link};
use crate::error::SimError;
use crate::time::{gb_per_s_to_bytes, transfer_time, Ps};
use flashsim_workloads::toml_source::{ConfigError, TomlSource};
use serde::Deserialize;
use std::collections::VecDeque;

pub const ENTRY: FlashEntry = FlashEntry {
    name: "parametric",
    summary: "T0 + S/B per request, parallel units, link maximum (FEMU-style timelines)",
    build,
};

/// `[flash]` with `model = "parametric"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParametricConfig {
    pub model: String,
    /// `T0`: fixed cost of one request on an idle device (command, lookup, NAND tR), µs.
    pub read_latency_us: f64,
    /// `B`: rate at which one request's data streams, GB/s (10^9 B/s).
    pub request_bandwidth_gb_per_s: f64,
    /// `B_max`: the most the device (or its link) delivers, GB/s.
    pub max_bandwidth_gb_per_s: f64,
    /// Requests the device serves at once (command-queue slots / parallel NAND units).
    pub parallel_units: u32,
    /// Commands per second the controller handles, in thousands (absent: not a limit).
    #[serde(default)]
    pub max_kiops: Option<f64>,
}

fn build(src: &TomlSource, table: toml::Value) -> Result<Box<dyn Flash>, ConfigError> {
    let c: ParametricConfig = src.parse_value(table, &["flash"])?;
    Ok(Box::new(Parametric::from_config(src, &c)?))
}

#[derive(Debug, Clone)]
pub struct Parametric {
    t0: Ps,
    request_bytes_per_s: u64,
    max_bytes_per_s: u64,
    command_time: Option<Ps>,
    /// When each unit is free, earliest first; the first takes the next request (units are
    /// identical: which one of several free at once takes a request changes no time). A
    /// sorted deque, not a heap: in a profile of the policies bench a heap's sifts were more
    /// than half of `submit`'s time (2026-11), where a new free time mostly goes at the back.
    unit_free: VecDeque<Ps>,
    units: u32,
    link: Link,
    controller_free: Ps,
    /// The last request size with its service time (`T0 + S/B`) and its time on the link.
    last_size: (u64, Ps, Ps),
}

impl Parametric {
    /// A model from raw values (tests); `command_time` is `1/IOPS`.
    pub fn new(
        t0: Ps,
        request_bytes_per_s: u64,
        max_bytes_per_s: u64,
        parallel_units: u32,
        command_time: Option<Ps>,
    ) -> Self {
        assert!(parallel_units > 0 && request_bytes_per_s > 0 && max_bytes_per_s > 0);
        assert!(request_bytes_per_s <= max_bytes_per_s);
        assert!(command_time.is_none_or(|c| c <= t0));
        Parametric {
            t0,
            request_bytes_per_s,
            max_bytes_per_s,
            command_time,
            unit_free: vec![Ps::ZERO; parallel_units as usize].into(),
            units: parallel_units,
            link: Link::default(),
            controller_free: Ps::ZERO,
            last_size: (0, t0, Ps::ZERO),
        }
    }

    fn from_config(src: &TomlSource, c: &ParametricConfig) -> Result<Self, ConfigError> {
        let t0_us = positive(src, "flash.read_latency_us", c.read_latency_us)?;
        let b = positive(
            src,
            "flash.request_bandwidth_gb_per_s",
            c.request_bandwidth_gb_per_s,
        )?;
        let bmax = positive(
            src,
            "flash.max_bandwidth_gb_per_s",
            c.max_bandwidth_gb_per_s,
        )?;
        if b > bmax {
            return Err(src.invalid(
                "flash.request_bandwidth_gb_per_s",
                format!("{b} GB/s exceeds max_bandwidth_gb_per_s = {bmax}: one request cannot outrun the device"),
            ));
        }
        if c.parallel_units == 0 {
            return Err(src.invalid("flash.parallel_units", "must be at least 1"));
        }
        let t0 =
            Ps::from_us(t0_us).map_err(|e| src.invalid("flash.read_latency_us", e.to_string()))?;
        let command_time = match c.max_kiops {
            None => None,
            Some(k) => {
                let k = positive(src, "flash.max_kiops", k)?;
                let ct = Ps((1e12 / (k * 1e3)).round() as u64);
                if ct > t0 {
                    return Err(src.invalid(
                        "flash.max_kiops",
                        format!("1/IOPS = {:.3} µs exceeds read_latency_us = {t0_us}: the controller's per-command time must fit inside T0", ct.as_us()),
                    ));
                }
                Some(ct)
            }
        };
        Ok(Parametric::new(
            t0,
            gb_per_s_to_bytes(b),
            gb_per_s_to_bytes(bmax),
            c.parallel_units,
            command_time,
        ))
    }
}

impl Flash for Parametric {
    fn submit(&mut self, now: Ps, _offset: u64, bytes: u64) -> Result<Ps, SimError> {
        // Requests mostly repeat one size (a readahead window, a column): reuse its two
        // divisions.
        if self.last_size.0 != bytes {
            self.last_size = (
                bytes,
                self.min_latency(bytes)?,
                transfer_time(bytes, self.max_bytes_per_s)?,
            );
        }
        let free = self.unit_free.pop_front().expect("at least one unit");
        let mut start = now.max(free);
        if let Some(ct) = self.command_time {
            start = start.max(self.controller_free);
            self.controller_free = start.checked_add(ct)?;
        }
        let (_, service, on_link) = self.last_size;
        let service_done = start.checked_add(service)?;
        let done = self.link.carry(now, service_done, on_link)?;
        // Completions mostly come in submission order: look for the place from the back.
        let mut at = self.unit_free.len();
        while at > 0 && self.unit_free[at - 1] > done {
            at -= 1;
        }
        if at == self.unit_free.len() {
            // Not `insert` at the end: see the same choice in `Link::carry`.
            self.unit_free.push_back(done);
        } else {
            self.unit_free.insert(at, done);
        }
        Ok(done)
    }

    fn min_latency(&self, bytes: u64) -> Result<Ps, SimError> {
        self.t0
            .checked_add(transfer_time(bytes, self.request_bytes_per_s)?)
    }

    fn max_bytes_per_s(&self) -> u64 {
        self.max_bytes_per_s
    }

    fn fresh(&self) -> Box<dyn Flash> {
        Box::new(Parametric::new(
            self.t0,
            self.request_bytes_per_s,
            self.max_bytes_per_s,
            self.units,
            self.command_time,
        ))
    }
}
