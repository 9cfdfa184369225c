//! Hot reload: on a file change, SIGHUP or `POST /admin/reload`, build a new snapshot and swap it
//! in atomically. A config that fails to build is refused and the running one keeps serving.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::shared::{LastError, Shared};
use crate::admin::audit::{self, Who};
use crate::config::compile::Snapshot;
use crate::config::ConfigErrors;

/// Builds and swaps in a new snapshot. Reloads are serialised so two triggers at once cannot race.
/// The reload is audited as done by `trigger` itself (a signal, the file watcher).
pub async fn reload(shared: &Shared, trigger: &str) -> Result<u64, ConfigErrors> {
    reload_by(shared, trigger, Who::local(trigger)).await
}

/// [`reload`] on behalf of `who` (an admin caller), who is named in the audit line.
pub async fn reload_by(shared: &Shared, trigger: &str, who: Who) -> Result<u64, ConfigErrors> {
    let _one_at_a_time = shared.reload_lock.lock().await;
    let before = shared.snapshot.load().version;
    let result = swap_in(shared, trigger, before + 1);
    let mut entry = audit::Entry::new("reload", trigger, who, before);
    match &result {
        Ok(v) => entry.version_after = *v,
        Err(errors) => {
            entry.outcome = audit::Outcome::Error;
            entry.reason = Some(
                errors
                    .0
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            );
        }
    }
    audit::record(shared, &entry);
    result
}

fn swap_in(shared: &Shared, trigger: &str, version: u64) -> Result<u64, ConfigErrors> {
    match build(shared, version) {
        Ok(snap) => {
            let snap = Arc::new(snap);
            let old = activate(shared, snap.clone());
            {
                let mut st = shared.status.lock();
                st.version = snap.version;
                st.hash = snap.hash.clone();
                st.loaded_at = snap.loaded_at;
                st.reloads_ok += 1;
            }
            shared.reload_metrics.ok.increment(1);
            shared.reload_metrics.last_success.set(1.0);
            tracing::info!(trigger, version, hash = %snap.hash, previous = old.version, "config reloaded");
            Ok(version)
        }
        Err(errors) => {
            {
                let mut st = shared.status.lock();
                st.reloads_failed += 1;
                st.last_error = Some(LastError {
                    at: SystemTime::now(),
                    trigger: trigger.to_string(),
                    problems: errors.0.clone(),
                    text: errors.0.iter().map(ToString::to_string).collect(),
                });
            }
            shared.reload_metrics.failed.increment(1);
            shared.reload_metrics.last_success.set(0.0);
            for p in &errors.0 {
                tracing::error!(trigger, problem = %p, "config refused; the previous config keeps serving");
            }
            Err(errors)
        }
    }
}

/// Makes `snap` the running config, at start and on every reload: swaps it in (the commit
/// point: the state it carries takes over from the old snapshot's), then starts the background
/// work it needs (health checks, rollout tickers, JWKS refreshers) that is not running yet, and
/// lets go of pools no upstream uses any more. Returns the snapshot it replaced.
pub fn activate(shared: &Shared, snap: Arc<Snapshot>) -> Arc<Snapshot> {
    let old = shared.snapshot.swap(snap.clone());
    if let Some(log) = &shared.access_log {
        log.set_redactor(snap.redact.clone());
    }
    shared.compiler.clients.retain(&snap.pool_keys());
    crate::identity::jwt::start_refreshers(&snap.jwt_providers);
    crate::pipeline::rollout::start(&snap.rollouts());
    crate::upstream::health::start(snap.upstreams.values());
    crate::pipeline::writes::start(&snap);
    for w in &snap.warnings {
        tracing::warn!(warning = %w, "config warning");
    }
    old
}

fn build(shared: &Shared, version: u64) -> Result<Snapshot, ConfigErrors> {
    let src = shared.source.read()?;
    let snap = shared
        .compiler
        .compile(&src, version, &shared.snapshot.load().carried)?;
    // Sockets are bound once at start; a reload that moves them would silently not take effect.
    let mut problems = Vec::new();
    let new: Vec<_> = snap
        .config
        .listeners
        .iter()
        .map(|l| (l.name.clone(), l.bind))
        .collect();
    if new != shared.bound_listeners {
        let running: Vec<String> = shared
            .bound_listeners
            .iter()
            .map(|(n, a)| format!("{n}@{a}"))
            .collect();
        problems.push(src.problem(
            "listeners",
            format!(
                "adding, removing, renaming or re-binding listeners needs a restart (running: {})",
                running.join(", ")
            ),
        ));
    }
    let old = shared.snapshot.load();
    for (key, changed) in [
        ("log", snap.config.log != old.config.log),
        ("runtime", snap.config.runtime != old.config.runtime),
        (
            "reload.watch",
            snap.config.reload.watch != old.config.reload.watch,
        ),
        (
            "admin.token_env",
            snap.config.admin.token_env != old.config.admin.token_env,
        ),
        ("telemetry.tracing", snap.tracing != old.tracing),
    ] {
        if changed {
            tracing::warn!(
                key,
                "this setting is read at start only; the change takes effect after a restart"
            );
        }
    }
    if snap.config.admin.bind != shared.admin_bind {
        problems.push(src.problem("admin.bind", "changing the admin address needs a restart"));
    }
    if problems.is_empty() {
        Ok(snap)
    } else {
        Err(ConfigErrors(problems))
    }
}

/// Watches the config file and every certificate it names. Editors often replace a file by
/// renaming a new one over it, so the watch is on the parent directories, filtered by file name.
pub fn spawn_watcher(shared: Arc<Shared>) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if matches!(
                ev.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
            ) {
                for p in ev.paths {
                    let _ = tx.send(p);
                }
            }
        }
    })?;
    let files = watched(&shared);
    for dir in dirs(&files) {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(async move {
        let mut files = files;
        let mut seen = stamps(&files);
        while let Some(first) = rx.recv().await {
            // Let a burst of writes (truncate, write, rename) settle into one reload.
            let debounce = shared.snapshot.load().config.reload.debounce;
            tokio::time::sleep(debounce).await;
            let mut hit = files.contains(&first);
            while let Ok(p) = rx.try_recv() {
                hit |= files.contains(&p);
            }
            // An event on another name in a watched folder matters when it re-points a link a
            // watched file goes through: the kubelet swaps a ConfigMap's or Secret's `..data`
            // link, and the file's own path never sees an event.
            let now = stamps(&files);
            if !hit && now == seen {
                continue;
            }
            let _ = reload(&shared, "file change").await;
            files = watched(&shared);
            seen = stamps(&files);
        }
    });
    Ok(watcher)
}

/// What a file is now, without reading it: where its links lead, and the inode, size and
/// modification time found there (`None` while it cannot be read).
type Stamp = Option<(PathBuf, u64, u64, SystemTime)>;

fn stamps(files: &HashSet<PathBuf>) -> Vec<(PathBuf, Stamp)> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out: Vec<_> = files
        .iter()
        .map(|f| {
            let stamp = std::fs::canonicalize(f).ok().and_then(|target| {
                let m = std::fs::metadata(&target).ok()?;
                Some((target, m.ino(), m.len(), m.modified().ok()?))
            });
            (f.clone(), stamp)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn watched(shared: &Shared) -> HashSet<PathBuf> {
    let snap = shared.snapshot.load();
    shared
        .source
        .path()
        .into_iter()
        .map(Path::to_path_buf)
        .chain(snap.watch_files.iter().cloned())
        .map(absolute)
        .collect()
}

fn dirs(files: &HashSet<PathBuf>) -> HashSet<PathBuf> {
    files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect()
}

fn absolute(p: PathBuf) -> PathBuf {
    std::path::absolute(&p).unwrap_or(p)
}
