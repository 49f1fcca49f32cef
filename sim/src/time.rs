//! Simulated time: an integer count of picoseconds, with checked arithmetic.
//!
//! `u64` picoseconds reach 213 days, far beyond any run; an overflow is an error, never a wrap.

use crate::error::SimError;
use std::fmt;

/// A point in simulated time, or a duration, in picoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct Ps(pub u64);

pub const PS_PER_US: u64 = 1_000_000;
pub const PS_PER_MS: u64 = 1_000_000_000;
pub const PS_PER_S: u64 = 1_000_000_000_000;

impl Ps {
    pub const ZERO: Ps = Ps(0);

    pub fn checked_add(self, d: Ps) -> Result<Ps, SimError> {
        // A match, not `ok_or`: that builds (and drops) the error on every call.
        match self.0.checked_add(d.0) {
            Some(t) => Ok(Ps(t)),
            None => Err(SimError::TimeOverflow),
        }
    }
    pub fn checked_sub(self, d: Ps) -> Result<Ps, SimError> {
        // A match, not `ok_or`: that builds (and drops) the error on every call.
        match self.0.checked_sub(d.0) {
            Some(t) => Ok(Ps(t)),
            None => Err(SimError::TimeOverflow),
        }
    }
    /// `n` times this duration.
    pub fn checked_mul(self, n: u64) -> Result<Ps, SimError> {
        match self.0.checked_mul(n) {
            Some(t) => Ok(Ps(t)),
            None => Err(SimError::TimeOverflow),
        }
    }
    /// `self - d`, or zero when `d` is later.
    pub fn saturating_sub(self, d: Ps) -> Ps {
        Ps(self.0.saturating_sub(d.0))
    }
    /// A duration given in microseconds (a config value), rounded to the nearest picosecond.
    pub fn from_us(us: f64) -> Result<Ps, SimError> {
        let ps = (us * PS_PER_US as f64).round();
        if !(0.0..=u64::MAX as f64).contains(&ps) {
            return Err(SimError::TimeOverflow);
        }
        Ok(Ps(ps as u64))
    }
    pub fn as_us(self) -> f64 {
        self.0 as f64 / PS_PER_US as f64
    }
    pub fn as_ms(self) -> f64 {
        self.0 as f64 / PS_PER_MS as f64
    }
    pub fn as_s(self) -> f64 {
        self.0 as f64 / PS_PER_S as f64
    }
}

impl fmt::Display for Ps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3} us", self.as_us())
    }
}

/// Time to move `bytes` at `bytes_per_s`, rounded up to the next picosecond
/// (`ceil(bytes * 10^12 / bytes_per_s)`), computed exactly in 128-bit integers.
pub fn transfer_time(bytes: u64, bytes_per_s: u64) -> Result<Ps, SimError> {
    if bytes_per_s == 0 {
        return Err(SimError::TimeOverflow);
    }
    // 64-bit when the product fits (any request under 18 MB): a 128-bit division is slow.
    if let Some(n) = bytes.checked_mul(PS_PER_S) {
        return Ok(Ps(n.div_ceil(bytes_per_s)));
    }
    let ps = (bytes as u128 * PS_PER_S as u128).div_ceil(bytes_per_s as u128);
    u64::try_from(ps)
        .map(Ps)
        .map_err(|_| SimError::TimeOverflow)
}

/// Converts a rate given in GB/s (10^9 bytes per second) to whole bytes per second.
pub fn gb_per_s_to_bytes(gb_per_s: f64) -> u64 {
    (gb_per_s * 1e9).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_time_is_exact_and_rounds_up() {
        assert_eq!(
            transfer_time(6_100_000_000, 6_100_000_000).unwrap(),
            Ps(PS_PER_S)
        );
        assert_eq!(transfer_time(1, 3).unwrap(), Ps(333_333_333_334));
    }

    #[test]
    fn overflow_is_an_error() {
        assert!(Ps(u64::MAX).checked_add(Ps(1)).is_err());
        assert!(transfer_time(u64::MAX, 1).is_err());
    }
}
