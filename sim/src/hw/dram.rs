//! DRAM: a capacity that allocations are tracked against (exceeding the budget is an error the
//! policy must avoid; the peak is reported) and a memory bus the compute units share.

use crate::error::SimError;
use crate::time::{transfer_time, Ps};
use serde::Deserialize;

/// `[dram]` of a device file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DramConfig {
    /// Installed DRAM, GiB (2^30 bytes). An experiment's budget may not exceed it.
    pub capacity_gib: f64,
    /// Peak bandwidth of the memory bus all compute units share, GB/s.
    pub bandwidth_gb_per_s: f64,
}

#[derive(Debug, Clone)]
pub struct Dram {
    budget_bytes: u64,
    in_use_bytes: u64,
    peak_bytes: u64,
    bus_bytes_per_s: u64,
    bus_free: Ps,
}

impl Dram {
    pub fn new(budget_bytes: u64, bus_bytes_per_s: u64) -> Self {
        Dram {
            budget_bytes,
            in_use_bytes: 0,
            peak_bytes: 0,
            bus_bytes_per_s,
            bus_free: Ps::ZERO,
        }
    }

    pub fn alloc(&mut self, bytes: u64) -> Result<(), SimError> {
        let total = self
            .in_use_bytes
            .checked_add(bytes)
            .filter(|&t| t <= self.budget_bytes);
        match total {
            Some(t) => {
                self.in_use_bytes = t;
                self.peak_bytes = self.peak_bytes.max(t);
                Ok(())
            }
            None => Err(SimError::DramBudgetExceeded {
                in_use_bytes: self.in_use_bytes,
                request_bytes: bytes,
                budget_bytes: self.budget_bytes,
            }),
        }
    }

    pub fn free(&mut self, bytes: u64) -> Result<(), SimError> {
        // `let else`, not `ok_or`: that builds (and drops) the error on every call.
        let Some(left) = self.in_use_bytes.checked_sub(bytes) else {
            return Err(SimError::DramUnderflow {
                bytes,
                in_use_bytes: self.in_use_bytes,
            });
        };
        self.in_use_bytes = left;
        Ok(())
    }

    pub fn in_use_bytes(&self) -> u64 {
        self.in_use_bytes
    }
    pub fn peak_bytes(&self) -> u64 {
        self.peak_bytes
    }
    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    /// Moves `bytes` over the shared bus, starting no earlier than `start`; returns when done.
    pub fn transfer(&mut self, start: Ps, bytes: u64) -> Result<Ps, SimError> {
        let begin = start.max(self.bus_free);
        self.bus_free = begin.checked_add(transfer_time(bytes, self.bus_bytes_per_s)?)?;
        Ok(self.bus_free)
    }
}
