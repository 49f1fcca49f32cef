//! Errors of a simulation run.

use crate::time::Ps;
use flashsim_policies::PolicyError;
use flashsim_workloads::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulated time overflowed 2^64 picoseconds")]
    TimeOverflow,
    #[error("an event was scheduled at {at} but the clock is already at {now}")]
    EventInPast { now: Ps, at: Ps },
    #[error(
        "DRAM budget exceeded: {in_use_bytes} bytes in use + {request_bytes} requested > budget {budget_bytes} bytes"
    )]
    DramBudgetExceeded {
        in_use_bytes: u64,
        request_bytes: u64,
        budget_bytes: u64,
    },
    #[error("DRAM freed {bytes} bytes but only {in_use_bytes} are in use")]
    DramUnderflow { bytes: u64, in_use_bytes: u64 },
    #[error("the plan names compute unit `{0}`, which the device does not have")]
    UnknownUnit(String),
    #[error("invalid plan: {0}")]
    Plan(String),
    #[error("the plan deadlocked: {0}")]
    Deadlock(String),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}
