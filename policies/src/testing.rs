//! Helpers for the policies' unit tests.

use flashsim_workloads::shape::ModelShape;
use flashsim_workloads::trace::stats::TraceView;
use flashsim_workloads::trace::Act;

/// A one-sequence trace whose activations a closure gives: `f(act, token, layer)`.
pub struct FnTrace<F> {
    pub shape: ModelShape,
    pub tokens: usize,
    pub f: F,
}

impl<F: Fn(Act, usize, usize) -> Vec<f32> + Sync> TraceView for FnTrace<F> {
    fn shape(&self) -> &ModelShape {
        &self.shape
    }
    fn tokens(&self) -> usize {
        self.tokens
    }
    fn sequences(&self) -> Vec<std::ops::Range<usize>> {
        std::iter::once(0..self.tokens).collect()
    }
    fn read(&self, act: Act, t: usize, l: usize, out: &mut Vec<f32>) {
        *out = (self.f)(act, t, l);
    }
}

/// A seeded xorshift64 stream, for randomized checks against a reference.
pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// Asserts that two caches over `units` units hold the same units.
pub fn assert_same_contents(
    a: &dyn crate::cache::UnitCache,
    b: &dyn crate::cache::UnitCache,
    units: usize,
) {
    assert_eq!(a.len(), b.len());
    for u in 0..units as u32 {
        assert_eq!(a.contains(u), b.contains(u), "unit {u}");
    }
}
