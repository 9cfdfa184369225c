//! What compiling a config learns besides the runtime values: its errors and warnings, each
//! located as `file:line: key.path`, and the files it read (watched for reloads).
//!
//! Each stage compiles its own section through a [`Section`], which names problems relative to
//! the section's key path, so a stage never spells the path of the section that contains it.

use std::path::{Path, PathBuf};

use super::{ConfigErrors, ConfigProblem, SourceText};

pub struct Problems<'s> {
    src: &'s SourceText,
    errors: Vec<ConfigProblem>,
    warnings: Vec<ConfigProblem>,
    files: Vec<PathBuf>,
}

/// What a valid config leaves behind besides its values.
pub struct Findings {
    pub warnings: Vec<ConfigProblem>,
    pub files: Vec<PathBuf>,
}

impl<'s> Problems<'s> {
    pub fn new(src: &'s SourceText) -> Self {
        Self {
            src,
            errors: Vec::new(),
            warnings: Vec::new(),
            files: Vec::new(),
        }
    }

    /// The section at `path` (`upstreams.legacy`, `routes[3]`; empty for the top level).
    pub fn at(&mut self, path: impl Into<String>) -> Section<'_, 's> {
        Section {
            problems: self,
            path: path.into(),
        }
    }

    /// The errors, if any; otherwise the warnings and the files read.
    pub fn finish(self) -> Result<Findings, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(Findings {
                warnings: self.warnings,
                files: self.files,
            })
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// One config section's view of the [`Problems`].
pub struct Section<'p, 's> {
    problems: &'p mut Problems<'s>,
    path: String,
}

impl<'s> Section<'_, 's> {
    /// `key` is relative to this section (`timeouts.connect`, `[2]`); empty names the section.
    pub fn error(&mut self, key: &str, reason: impl Into<String>) {
        let p = self.problems.src.problem(&self.key(key), reason);
        self.problems.errors.push(p);
    }

    /// Valid, but probably not what was meant (or not for production).
    pub fn warn(&mut self, key: &str, reason: impl Into<String>) {
        let p = self.problems.src.problem(&self.key(key), reason);
        self.problems.warnings.push(p);
    }

    /// A subsection of this one.
    pub fn at(&mut self, key: &str) -> Section<'_, 's> {
        let path = self.key(key);
        Section {
            problems: &mut *self.problems,
            path,
        }
    }

    /// A file the config names, resolved against the config's folder and watched for changes.
    pub fn file(&mut self, relative: impl AsRef<Path>) -> PathBuf {
        let f = self.problems.src.base_dir.join(relative);
        self.problems.files.push(f.clone());
        f
    }

    /// The folder relative paths in the config are resolved against.
    pub fn base_dir(&self) -> &'s Path {
        &self.problems.src.base_dir
    }

    /// Reports every `(key, reason)` a stage's own validation returned.
    pub fn errors(&mut self, list: impl IntoIterator<Item = (String, String)>) {
        for (key, reason) in list {
            self.error(&key, reason);
        }
    }

    fn key(&self, key: &str) -> String {
        match (self.path.is_empty(), key.is_empty()) {
            (_, true) => self.path.clone(),
            (true, false) => key.to_string(),
            (false, false) if key.starts_with('[') => format!("{}{key}", self.path),
            (false, false) => format!("{}.{key}", self.path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;

    #[test]
    fn keys_are_joined_to_the_section_path_and_located() {
        let src = ConfigSource::Embedded {
            name: "t.yaml".into(),
            text: "upstreams:\n  a:\n    endpoints: []\nroutes: []\n",
            base_dir: PathBuf::from("/etc/ficus"),
        }
        .read()
        .unwrap();
        let mut p = Problems::new(&src);
        let mut up = p.at("upstreams.a");
        up.error("endpoints", "list at least one endpoint");
        up.at("endpoints").error("[0]", "x");
        up.warn("", "whole section");
        let f = p.at("routes").file("schema.json");
        assert_eq!(f, PathBuf::from("/etc/ficus/schema.json"));
        let errs = p.finish().err().unwrap().0;
        assert_eq!(
            errs[0].to_string(),
            "t.yaml:3: upstreams.a.endpoints: list at least one endpoint"
        );
        assert_eq!(errs[1].path, "upstreams.a.endpoints[0]");
        assert_eq!(errs.len(), 2);
    }
}
