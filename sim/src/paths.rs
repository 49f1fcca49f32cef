//! Finding device and model files by name.
//!
//! `device = "m1max-ssd"` names `configs/devices/m1max-ssd.toml`; a value ending in `.toml` is a
//! path relative to the experiment file. The `configs/` folder is, in order: `$FLASHSIM_CONFIGS`;
//! the nearest ancestor of the experiment file that is, or contains, `configs/`; the repository
//! this binary was built from.

use flashsim_workloads::toml_source::{ConfigError, TomlSource};
use std::path::{Path, PathBuf};

/// Candidate `configs/` folders for an experiment at `experiment`.
pub fn config_dirs(experiment: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("FLASHSIM_CONFIGS") {
        dirs.push(PathBuf::from(d));
    }
    let abs = std::fs::canonicalize(experiment).unwrap_or_else(|_| experiment.to_path_buf());
    for a in abs.ancestors().skip(1) {
        if a.file_name().is_some_and(|n| n == "configs") {
            dirs.push(a.to_path_buf());
            break;
        }
        if a.join("configs").is_dir() {
            dirs.push(a.join("configs"));
            break;
        }
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs"));
    dirs.dedup();
    dirs
}

/// Resolves `name` of `kind` (`devices`, `models`) written at `key` in the experiment `src`.
pub fn resolve(
    src: &TomlSource,
    key: &str,
    kind: &str,
    name: &str,
) -> Result<PathBuf, ConfigError> {
    if name.ends_with(".toml") {
        let base = src.path.parent().unwrap_or(Path::new("."));
        let p = base.join(name);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(src.invalid(key, format!("no file {}", p.display())))
        };
    }
    let dirs = config_dirs(&src.path);
    for d in &dirs {
        let p = d.join(kind).join(format!("{name}.toml"));
        if p.is_file() {
            return Ok(p);
        }
    }
    let looked: Vec<String> = dirs
        .iter()
        .map(|d| d.join(kind).display().to_string())
        .collect();
    Err(src.invalid(
        key,
        format!("no {kind} file `{name}.toml` in {}", looked.join(", ")),
    ))
}

/// Names of the `.toml` files in `configs/<kind>/`, sorted.
pub fn list(dir: &Path, kind: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join(kind))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            if p.extension()? != "toml" {
                return None;
            }
            Some(p.file_stem()?.to_string_lossy().into_owned())
        })
        .collect();
    v.sort();
    v
}

/// Resolves the experiment's `trace` value: a path ending in `.safetensors` (relative to the
/// experiment file) or the name of a trace in `workloads/traces/` beside a `configs/` folder.
pub fn resolve_trace(src: &TomlSource, name: &str) -> Result<PathBuf, ConfigError> {
    if name.ends_with(".safetensors") {
        let p = src.path.parent().unwrap_or(Path::new(".")).join(name);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(src.invalid("trace", format!("no file {}", p.display())))
        };
    }
    let dirs: Vec<PathBuf> = config_dirs(&src.path)
        .into_iter()
        .map(|d| d.join("../workloads/traces"))
        .collect();
    for d in &dirs {
        let p = d.join(format!("{name}.safetensors"));
        if p.is_file() {
            return Ok(p);
        }
    }
    let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(src.invalid(
        "trace",
        format!("no trace `{name}.safetensors` in {} (use `none`, a bundled name, or a path ending in .safetensors)", looked.join(", ")),
    ))
}
