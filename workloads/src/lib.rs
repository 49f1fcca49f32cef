//! flashsim-workloads: what runs.
//!
//! - [`toml_source`]: reading TOML files with errors that name the file, the key and the line
//!   (shared by every crate of the workspace).
//! - [`shape`]: model shapes (layers, widths, heads, bytes per weight) and the byte and FLOP
//!   counts that follow from them.

pub mod checkpoint;
pub mod error;
pub mod model;
pub mod quality;
pub mod shape;
pub mod tokenizer;
pub mod toml_source;
pub mod trace;

pub use error::WorkloadError;
pub use shape::ModelShape;
pub use toml_source::{ConfigError, TomlSource};

/// The folder of real checkpoints and tokenizers: `$FLASHSIM_MODELS`, else `../shared/models`
/// beside the repository. `None` when it does not hold `stories260K.bin`.
pub fn shared_models_dir() -> Option<std::path::PathBuf> {
    let candidates = [
        std::env::var_os("FLASHSIM_MODELS").map(std::path::PathBuf::from),
        Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/models")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("stories260K.bin").is_file())
}

/// [`shared_models_dir`] for tests: under `CI=true` a missing folder fails the test loudly;
/// elsewhere the test says on stderr that it is skipped and returns `None`.
pub fn shared_models_for_test() -> Option<std::path::PathBuf> {
    match shared_models_dir() {
        Some(d) => Some(d),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("../shared/models/stories260K.bin is missing (set FLASHSIM_MODELS); CI=true requires it")
        }
        None => {
            // Straight to stderr: the test harness captures eprintln!, and a skip must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: ../shared/models/stories260K.bin is missing (set FLASHSIM_MODELS)"
            );
            None
        }
    }
}
