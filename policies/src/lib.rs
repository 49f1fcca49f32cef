//! flashsim-policies: what decides.
//!
//! A policy has no clock and does no I/O: per token it turns what it knows (the model shape, the
//! weight layout, the trace) into a [`plan::TokenPlan`] — which extents of the weight file to
//! read and when, what to compute on which unit — that the simulator (and later the real
//! backend) executes.
//!
//! - [`plan`]: extents, reads, ops and the token plan.
//! - [`layout`]: where each weight matrix sits in the flash file.
//! - [`decode`]: the ops every decode step has (attention with its KV cache, FFN, LM head).
//! - [`policy`]: the [`Policy`] trait and the registry that builds a policy by name.
//! - [`cache`]: sliding window, LRU, LFU, count-admission LFU and Belady caches of weight units.
//! - one file per policy: [`dense_streaming`], [`all_in_dram`], [`llm_in_a_flash`], [`dip`], [`activeflow`], [`mmap`].

pub mod activeflow;
pub mod all_in_dram;
pub mod cache;
pub mod decode;
pub mod dense_streaming;
pub mod dip;
pub mod layout;
pub mod llm_in_a_flash;
pub mod mmap;
pub mod plan;
pub mod policy;
#[cfg(test)]
mod testing;
pub mod topk;

pub use plan::{AppliedMask, DramChange, Extent, IssueAfter, Op, OpKind, Read, TokenPlan};
pub use policy::{
    registry, DeviceRates, Policy, PolicyContext, PolicyEntry, PolicyError, PolicySetup,
    SizingContext, TokenInfo,
};
