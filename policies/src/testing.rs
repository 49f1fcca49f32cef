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
