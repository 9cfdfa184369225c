//! Config: the file format (`file`), compilation into an immutable runtime snapshot (`compile`),
//! and hot reload (`reload`). Errors always name `file:line: key.path: reason`.

pub mod carry;
pub mod compile;
pub mod file;
pub mod locate;
pub mod problems;
pub mod schema;
pub mod transform;
pub mod values;
pub mod writes;

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use file::FileConfig;
use locate::LineIndex;

/// Where the config comes from. The demo embeds its config in the binary.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    Embedded {
        name: String,
        text: &'static str,
        base_dir: PathBuf,
    },
}

impl ConfigSource {
    pub fn name(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Embedded { name, .. } => name.clone(),
        }
    }

    /// Relative certificate and key paths are resolved against this directory.
    pub fn base_dir(&self) -> PathBuf {
        match self {
            Self::File(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
            Self::Embedded { base_dir, .. } => base_dir.clone(),
        }
    }

    pub fn read(&self) -> Result<SourceText, ConfigErrors> {
        let text = match self {
            Self::File(p) => std::fs::read_to_string(p).map_err(|e| {
                ConfigErrors::one(&self.name(), 1, "", format!("cannot read the config file: {e}"))
            })?,
            Self::Embedded { text, .. } => (*text).to_string(),
        };
        let hash = Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let index = LineIndex::new(&text);
        Ok(SourceText {
            name: self.name(),
            base_dir: self.base_dir(),
            text,
            hash,
            index,
        })
    }

    /// The file to watch for changes, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::File(p) => Some(p),
            Self::Embedded { .. } => None,
        }
    }
}

pub struct SourceText {
    pub name: String,
    pub base_dir: PathBuf,
    pub text: String,
    pub hash: String,
    pub index: LineIndex,
}

impl SourceText {
    pub fn problem(&self, path: &str, reason: impl Into<String>) -> ConfigProblem {
        ConfigProblem {
            file: self.name.clone(),
            line: self.index.line_of(path).unwrap_or(1),
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    /// YAML syntax and shape (types, unknown keys, missing keys).
    pub fn parse(&self) -> Result<FileConfig, ConfigErrors> {
        let de = serde_yaml_ng::Deserializer::from_str(&self.text);
        serde_path_to_error::deserialize::<_, FileConfig>(de).map_err(|e| {
            let mut path = e.path().to_string();
            if path == "." {
                path.clear();
            }
            // serde_path_to_error writes `?` for a position it could not name (syntax errors).
            if let Some(i) = path.find('?') {
                path.truncate(i);
                while path.ends_with('.') {
                    path.pop();
                }
            }
            let inner = e.into_inner();
            let mut reason = inner.to_string();
            // serde_yaml appends its own position; ours is in front already.
            if let Some(i) = reason.rfind(" at line ") {
                reason.truncate(i);
            }
            // ...and may prefix the path, which we print separately.
            if let Some((head, rest)) = reason.split_once(": ") {
                if !head.is_empty() && path.starts_with(head) {
                    reason = rest.to_string();
                }
            }
            // For an unknown key, point at the key itself rather than its parent.
            let key_path = unknown_field(&reason).map(|f| {
                if path == f || path.ends_with(&format!(".{f}")) {
                    path.clone()
                } else if path.is_empty() {
                    f.to_string()
                } else {
                    format!("{path}.{f}")
                }
            });
            let line = key_path
                .as_deref()
                .and_then(|p| self.index.line_of(p))
                .or_else(|| inner.location().map(|l| l.line()))
                .or_else(|| self.index.line_of(&path))
                .unwrap_or(1);
            let shown = key_path.unwrap_or(path);
            ConfigErrors(vec![ConfigProblem {
                file: self.name.clone(),
                line,
                path: shown,
                reason,
            }])
        })
    }
}

fn unknown_field(reason: &str) -> Option<&str> {
    let rest = reason.strip_prefix("unknown field `")?;
    Some(&rest[..rest.find('`')?])
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigProblem {
    pub file: String,
    pub line: usize,
    pub path: String,
    pub reason: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}:{}: {}", self.file, self.line, self.reason)
        } else {
            write!(f, "{}:{}: {}: {}", self.file, self.line, self.path, self.reason)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl ConfigErrors {
    pub fn one(file: &str, line: usize, path: &str, reason: impl Into<String>) -> Self {
        Self(vec![ConfigProblem {
            file: file.into(),
            line,
            path: path.into(),
            reason: reason.into(),
        }])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}
