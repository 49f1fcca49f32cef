//! flashsim-workloads: what runs.
//!
//! - [`toml_source`]: reading TOML files with errors that name the file, the key and the line
//!   (shared by every crate of the workspace).
//! - [`shape`]: model shapes (layers, widths, heads, bytes per weight) and the byte and FLOP
//!   counts that follow from them.

pub mod shape;
pub mod toml_source;

pub use shape::ModelShape;
pub use toml_source::{ConfigError, TomlSource};
