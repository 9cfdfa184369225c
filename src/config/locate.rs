//! Maps a key path (`listeners[0].limits.max_body_bytes`) to its line in the YAML text, so that
//! every config problem can be reported as `file:line: key.path: reason`. serde does not keep
//! positions, so the text is walked once more with yaml-rust2's marked events.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

enum Frame {
    /// `next_key` is true while the next scalar is a key.
    Map {
        path: String,
        key: Option<String>,
        next_key: bool,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl Walker {
    /// The path of the value that starts now, recording its line; `None` when a key was read.
    fn value_path(&mut self, line: usize, scalar: Option<&str>) -> Option<String> {
        let path = match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Map { path, key, next_key }) => {
                if *next_key {
                    let k = scalar.unwrap_or("?").to_string();
                    let full = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    self.lines.entry(full).or_insert(line);
                    *key = Some(k);
                    *next_key = false;
                    return None;
                }
                *next_key = true;
                let k = key.take().unwrap_or_default();
                if path.is_empty() {
                    k
                } else {
                    format!("{path}.{k}")
                }
            }
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                self.lines.entry(p.clone()).or_insert(line);
                p
            }
        };
        Some(path)
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(ref s, ..) => {
                self.value_path(line, Some(s));
            }
            Event::Alias(_) => {
                self.value_path(line, None);
            }
            Event::MappingStart(..) => {
                if let Some(path) = self.value_path(line, None) {
                    self.stack.push(Frame::Map {
                        path,
                        key: None,
                        next_key: true,
                    });
                }
            }
            Event::SequenceStart(..) => {
                if let Some(path) = self.value_path(line, None) {
                    self.stack.push(Frame::Seq { path, next: 0 });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl LineIndex {
    /// Indexes `text`. A text that does not parse as YAML gives an empty index; the serde pass
    /// reports the syntax error with its own position.
    pub fn new(text: &str) -> Self {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut walker, false);
        Self { lines: walker.lines }
    }

    /// The 1-based line of `path`, or of its nearest ancestor present in the text (a missing key
    /// is reported where its parent is).
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
            if p.is_empty() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
log:
  level: info
listeners:
  - name: main
    bind: 127.0.0.1:8080
    limits:
      max_body_bytes: 10MiB
  - name: tls
    bind: 127.0.0.1:8443
upstreams:
  legacy:
    endpoints: [\"http://a\", \"http://b\"]
";

    #[test]
    fn finds_keys_items_and_nested_values() {
        let idx = LineIndex::new(TEXT);
        assert_eq!(idx.line_of("log"), Some(1));
        assert_eq!(idx.line_of("log.level"), Some(2));
        assert_eq!(idx.line_of("listeners[0]"), Some(4));
        assert_eq!(idx.line_of("listeners[0].limits.max_body_bytes"), Some(7));
        assert_eq!(idx.line_of("listeners[1].bind"), Some(9));
        assert_eq!(idx.line_of("upstreams.legacy.endpoints[1]"), Some(12));
    }

    #[test]
    fn missing_keys_fall_back_to_their_parent() {
        let idx = LineIndex::new(TEXT);
        assert_eq!(idx.line_of("listeners[1].tls.certs[0]"), Some(8));
        assert_eq!(idx.line_of("nothing.here"), None);
    }
}
