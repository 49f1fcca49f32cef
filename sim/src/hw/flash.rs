//! The flash device: requests in, completion times out.
//!
//! A model is called with requests in non-decreasing submission time and answers each with its
//! completion time, keeping its own resource timelines (FEMU style: each resource remembers when
//! it is next free). Contention and queueing therefore come out of the model, not a formula.

use crate::error::SimError;
use crate::time::Ps;
use flashsim_workloads::toml_source::{ConfigError, TomlSource};

pub trait Flash: Send + std::fmt::Debug {
    /// A read of `bytes` at `offset`, submitted at `now`; returns when it completes.
    fn submit(&mut self, now: Ps, offset: u64, bytes: u64) -> Result<Ps, SimError>;
    /// The least time a read of `bytes` can take (an idle device at queue depth 1).
    fn min_latency(&self, bytes: u64) -> Result<Ps, SimError>;
    /// The device's maximum sustained read throughput.
    fn max_bytes_per_s(&self) -> u64;
    /// A copy of this model with every resource idle at time zero.
    fn fresh(&self) -> Box<dyn Flash>;
}

/// Builds a flash model from the device file's `[flash]` table (at key `flash`).
pub type BuildFlash =
    fn(src: &TomlSource, table: toml::Value) -> Result<Box<dyn Flash>, ConfigError>;

pub struct FlashEntry {
    pub name: &'static str,
    pub summary: &'static str,
    pub build: BuildFlash,
}

/// Every flash model, by the name written as `model = "…"` in `[flash]`.
pub fn registry() -> &'static [FlashEntry] {
    &[super::flash_parametric::ENTRY, super::flash_measured::ENTRY]
}

/// Builds the model named by `flash.model`.
pub fn build(src: &TomlSource, table: &toml::Value) -> Result<Box<dyn Flash>, ConfigError> {
    let name = table
        .get("model")
        .and_then(toml::Value::as_str)
        .ok_or_else(|| {
            src.invalid(
                "flash.model",
                "missing: name a flash model (`parametric` or `measured`)",
            )
        })?;
    let entry = registry().iter().find(|e| e.name == name).ok_or_else(|| {
        let known: Vec<_> = registry().iter().map(|e| e.name).collect();
        src.invalid(
            "flash.model",
            format!("unknown flash model `{name}`; known: {}", known.join(", ")),
        )
    })?;
    (entry.build)(src, table.clone())
}

/// Checks that a config value is finite and positive.
pub fn positive(src: &TomlSource, key: &str, v: f64) -> Result<f64, ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(src.invalid(key, format!("must be a positive number, got {v}")))
    }
}

/// A device's link (its bus to the host): each request's data crosses it in one stretch of
/// `bytes / max` that ends when the request completes, in the first free stretch that ends no
/// earlier than the request's service, so transfers never overlap and no run of completions
/// delivers more than the link carries, while requests complete out of order: a short read
/// waits for a longer one submitted before it only while the link carries that one's data.
#[derive(Debug, Clone, Default)]
pub struct Link {
    /// When the link is busy from now on, `(start, end)`: disjoint, not touching (transfers
    /// back to back are one stretch, so a saturated link is one entry), by start.
    busy: std::collections::VecDeque<(Ps, Ps)>,
}

impl Link {
    /// Books `on_link` in the first free stretch that ends at `ready` or later (busy time
    /// over by `now`, which never decreases, is forgotten); returns when the transfer ends.
    pub fn carry(&mut self, now: Ps, ready: Ps, on_link: Ps) -> Result<Ps, SimError> {
        while self.busy.front().is_some_and(|&(_, end)| end <= now) {
            self.busy.pop_front();
        }
        let mut from = ready.checked_sub(on_link)?;
        // The first busy stretch that ends after `from`, then on until a gap fits. Transfers
        // mostly land at or next to the end of what is booked: look there before searching.
        let n = self.busy.len();
        let ends_by = |i: usize| self.busy[i].1 <= from;
        let mut at = if n == 0 || ends_by(n - 1) {
            n
        } else if n == 1 || ends_by(n - 2) {
            n - 1
        } else {
            self.busy.partition_point(|&(_, end)| end <= from)
        };
        while let Some(&(start, end)) = self.busy.get(at) {
            if start >= from.checked_add(on_link)? {
                break;
            }
            from = from.max(end);
            at += 1;
        }
        let end = from.checked_add(on_link)?;
        let joins_before = at > 0 && self.busy[at - 1].1 == from;
        let joins_after = self.busy.get(at).is_some_and(|&(start, _)| start == end);
        match (joins_before, joins_after) {
            (true, true) => {
                self.busy[at - 1].1 = self.busy[at].1;
                self.busy.remove(at);
            }
            (true, false) => self.busy[at - 1].1 = end,
            (false, true) => self.busy[at].0 = from,
            // `insert` at the end is correct too, but with it here and in the parametric
            // units' deque the policies bench ran 3-6% slower than with `push_back` (2026-11).
            (false, false) if at == self.busy.len() => self.busy.push_back((from, end)),
            (false, false) => self.busy.insert(at, (from, end)),
        }
        Ok(end)
    }
}
