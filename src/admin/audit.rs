//! The audit log: one JSON line per action that changes state (a reload, whatever triggered it;
//! a rollout change; a refused admin write), saying who, what, the config version before and
//! after, and the outcome. It goes to `admin.audit_log` (a file, appended) or, unset, to stderr
//! beside the other logs.
//!
//! Who is the admin peer's address and a fingerprint of the bearer token it sent (the first 8
//! hex digits of its SHA-256): enough to tell two tokens apart, never the token.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::SystemTime;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::gateway::shared::Shared;

/// The admin peer, put in each admin request's extensions by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Who {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// `sha256:` and the first 8 hex digits of the SHA-256 of the bearer token sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Not an admin call: `SIGHUP`, `file change`, or what started the reload in-process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
}

impl Who {
    pub fn local(trigger: &str) -> Self {
        Self {
            local: Some(trigger.to_string()),
            ..Self::default()
        }
    }

    pub fn admin(peer: Option<SocketAddr>, token: Option<&str>) -> Self {
        Self {
            peer: peer.map(|p| p.to_string()),
            token: token.map(fingerprint),
            local: None,
        }
    }
}

/// A token's fingerprint: `sha256:` and the first 8 hex digits of its digest.
pub fn fingerprint(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    let hex: String = d.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Error,
    /// The caller was not allowed (no or a wrong token, or admin writes disabled).
    Denied,
}

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub ts: String,
    pub kind: &'static str,
    /// `reload`, `rollout.pause`, `rollout.resume`, `rollout.set`, `rollout` (not understood).
    pub action: String,
    /// What started it: `admin api`, `SIGHUP`, `file change`.
    pub trigger: String,
    pub who: Who,
    /// The route, for a rollout change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub version_before: u64,
    pub version_after: u64,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Action-specific facts, e.g. a rollout's percent before and after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

impl Entry {
    pub fn new(action: impl Into<String>, trigger: impl Into<String>, who: Who, version: u64) -> Self {
        Self {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            kind: "audit",
            action: action.into(),
            trigger: trigger.into(),
            who,
            target: None,
            version_before: version,
            version_after: version,
            outcome: Outcome::Ok,
            reason: None,
            detail: None,
        }
    }
}

/// Records an action's answer: a failure is the entry's outcome, with the status as its reason
/// unless the action gave one.
pub fn record_answer(
    shared: &Shared,
    mut entry: Entry,
    resp: &hyper::Response<crate::pipeline::body::ResponseBody>,
) {
    if !resp.status().is_success() {
        entry.outcome = Outcome::Error;
        entry.reason.get_or_insert_with(|| resp.status().to_string());
    }
    record(shared, &entry);
}

/// Writes one line where the running config says. Admin actions are rare, so the file is
/// opened per line: a rotated file is picked up without a signal.
pub fn record(shared: &Shared, entry: &Entry) {
    let Ok(mut line) = serde_json::to_vec(entry) else {
        return;
    };
    line.push(b'\n');
    let target = shared.snapshot.load().config.admin.audit_log.clone();
    let written = match target {
        Some(path) => {
            let path = shared.source.base_dir().join(path);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(&line))
        }
        None => std::io::stderr().lock().write_all(&line),
    };
    if let Err(e) = written {
        tracing::error!(error = %e, action = %entry.action, "cannot write the audit log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_fingerprint_is_short_and_not_the_token() {
        let f = fingerprint("s3cret-admin-token");
        assert!(f.starts_with("sha256:"), "{f}");
        assert_eq!(f.len(), "sha256:".len() + 8);
        assert!(!f.contains("s3cret"));
        assert_eq!(f, fingerprint("s3cret-admin-token"));
        assert_ne!(f, fingerprint("another-token"));
    }

    #[test]
    fn an_entry_serialises_who_what_versions_and_outcome() {
        let mut e = Entry::new(
            "reload",
            "admin api",
            Who::admin(Some(SocketAddr::from(([127, 0, 0, 1], 4000))), Some("tok")),
            3,
        );
        e.version_after = 4;
        let v = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(v["kind"], "audit");
        assert_eq!(v["action"], "reload");
        assert_eq!(v["who"]["peer"], "127.0.0.1:4000");
        assert_eq!(v["who"]["token"], fingerprint("tok"));
        assert_eq!(v["version_before"], 3);
        assert_eq!(v["version_after"], 4);
        assert_eq!(v["outcome"], "ok");
        assert!(v.get("reason").is_none());
    }
}
