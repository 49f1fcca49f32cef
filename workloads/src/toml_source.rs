//! TOML files with errors a researcher can act on.
//!
//! Every configuration in flashsim (devices, models, experiments) is read through
//! [`TomlSource`], so that a wrong key, a missing field or a bad value is reported as
//! `file:line: key `a.b`: message`, never as a bare serde message or a panic.

use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// An error in a configuration file: which file, which key, which line, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key/value is wrong for its place.
    #[error("{}", Located { path, key: key.as_deref(), line: *line, message })]
    Invalid {
        path: PathBuf,
        /// Dotted key path (`policies.dense-streaming.pinned_fraction`), when known.
        key: Option<String>,
        /// 1-based line of the key (or of its table when the key is missing).
        line: Option<usize>,
        message: String,
    },
}

struct Located<'a> {
    path: &'a Path,
    key: Option<&'a str>,
    line: Option<usize>,
    message: &'a str,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ConfigError {
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => key.as_deref(),
            ConfigError::Io { .. } => None,
        }
    }
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => *line,
            ConfigError::Io { .. } => None,
        }
    }
}

/// The text of one TOML file, kept so that errors found after parsing can still point at a line.
#[derive(Debug, Clone)]
pub struct TomlSource {
    pub path: PathBuf,
    pub text: String,
    table: toml::Table,
}

impl TomlSource {
    /// Reads and parses `path`; a syntax error names the line.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref().to_path_buf();
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_text(path, text)
    }

    /// Parses `text` as if it had been read from `path`.
    pub fn from_text(
        path: impl Into<PathBuf>,
        text: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        let path = path.into();
        let text = text.into();
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Invalid {
                line: e.span().map(|s| line_of_offset(&text, s.start)),
                key: None,
                message: e.message().trim().to_string(),
                path: path.clone(),
            })?;
        Ok(TomlSource { path, text, table })
    }

    /// The parsed top-level table.
    pub fn table(&self) -> &toml::Table {
        &self.table
    }

    /// Deserializes the whole file into `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        self.parse_value(toml::Value::Table(self.table.clone()), &[])
    }

    /// Deserializes `value`, which sits at `prefix` in this file, into `T`. Errors carry the full
    /// dotted key and the line where that key (or its table) is written.
    pub fn parse_value<T: DeserializeOwned>(
        &self,
        value: toml::Value,
        prefix: &[&str],
    ) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
            let mut key: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
            for seg in e.path().iter() {
                if let serde_path_to_error::Segment::Map { key: k } = seg {
                    key.push(k.clone());
                } else if let serde_path_to_error::Segment::Seq { index } = seg {
                    key.push(index.to_string());
                }
            }
            let inner = e.into_inner();
            let message = inner.message().trim().to_string();
            // serde names the offending field in backticks for unknown and missing fields.
            let named = backticked(&message);
            let parent_line = self.line_of(&key);
            if let Some(field) = named.filter(|f| {
                (message.starts_with("unknown field") || message.starts_with("missing field"))
                    && key.last().map(String::as_str) != Some(*f)
            }) {
                key.push(field.to_string());
            }
            let line = self.line_of(&key).or(parent_line);
            self.error_at(&key.join("."), line, message)
        })
    }

    /// An error about `key` (dotted path) in this file, located at the key's line.
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let parts: Vec<String> = key.split('.').map(str::to_string).collect();
        let line = self.line_of(&parts);
        self.error_at(key, line, message.into())
    }

    fn error_at(&self, key: &str, line: Option<usize>, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            key: (!key.is_empty()).then(|| key.to_string()),
            line,
            message,
        }
    }

    /// 1-based line on which the dotted key `path` is written; for an array element, the
    /// array's line. `None` when the key is not in the file (a default was used).
    pub fn line_of<S: AsRef<str>>(&self, path: &[S]) -> Option<usize> {
        if path.is_empty() {
            // The top-level table starts on the first line.
            return Some(1);
        }
        let doc = toml_edit::ImDocument::parse(self.text.as_str()).ok()?;
        let mut item: &toml_edit::Item = doc.as_item();
        let mut best: Option<usize> = None;
        for seg in path {
            let seg = seg.as_ref();
            if let Some(t) = item.as_table_like() {
                let (k, v) = t.get_key_value(seg)?;
                best = k.span().or_else(|| v.span()).map(|s| s.start).or(best);
                item = v;
            } else if let (Some(arr), Ok(i)) = (item.as_array(), seg.parse::<usize>()) {
                let v = arr.get(i)?;
                best = v.span().map(|s| s.start).or(best);
                return best.map(|o| line_of_offset(&self.text, o));
            } else {
                break;
            }
        }
        best.map(|o| line_of_offset(&self.text, o))
    }
}

fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// 1-based line number of byte `offset` in `text`.
pub fn line_of_offset(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        bandwidth_gb_per_s: f64,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        flash: Inner,
    }

    #[test]
    fn unknown_key_names_file_key_and_line() {
        let src = TomlSource::from_text(
            "dev.toml",
            "name = \"x\"\n\n[flash]\nbandwidth_gb_per_s = 1.0\nbandwith = 2\n",
        )
        .unwrap();
        let e = src.parse::<Outer>().unwrap_err();
        println!("{e}");
        assert_eq!(e.key(), Some("flash.bandwith"));
        assert_eq!(e.line(), Some(5));
        assert!(e
            .to_string()
            .starts_with("dev.toml:5: key `flash.bandwith`"));
    }

    #[test]
    fn missing_key_points_at_its_table() {
        let src = TomlSource::from_text("dev.toml", "name = \"x\"\n[flash]\n").unwrap();
        let e = src.parse::<Outer>().unwrap_err();
        println!("{e}");
        assert_eq!(e.key(), Some("flash.bandwidth_gb_per_s"));
        assert_eq!(e.line(), Some(2));
        assert!(e.to_string().contains("missing field"));
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let src = TomlSource::from_text(
            "dev.toml",
            "name = \"x\"\n[flash]\nbandwidth_gb_per_s = \"fast\"\n",
        )
        .unwrap();
        let e = src.parse::<Outer>().unwrap_err();
        println!("{e}");
        assert_eq!(e.key(), Some("flash.bandwidth_gb_per_s"));
        assert_eq!(e.line(), Some(3));
    }

    #[test]
    fn syntax_error_names_line() {
        let e = TomlSource::from_text("x.toml", "a = 1\nb = = 2\n").unwrap_err();
        println!("{e}");
        assert_eq!(e.line(), Some(2));
    }
}
