//! A running gateway: the shared state every connection sees, and the start/reload/shutdown
//! lifecycle. The binary, the demo and the end-to-end tests all start ficus through [`Gateway`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod reload;
pub mod shared;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::compile::{Carried, Compiler};
use crate::config::{ConfigErrors, ConfigSource};
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::{ACCESS_LOG_DROPPED, CONFIG_LAST_RELOAD_SUCCESS, CONFIG_RELOADS_TOTAL};
pub use shared::{ReloadMetrics, ReloadStatus, Shared};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("cannot bind listener `{name}` to {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot watch the config files: {0}")]
    Watch(#[from] notify::Error),
    #[error("cannot start the trace exporter: {0}")]
    Traces(crate::telemetry::traces::TracesError),
}

pub struct Gateway {
    shared: Arc<Shared>,
    addrs: Vec<(String, SocketAddr)>,
    admin_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Gateway {
    /// Loads and compiles the config, binds every listener and the admin listener, and starts
    /// serving. Fails without serving anything if the config is invalid or a bind fails.
    pub async fn start(source: ConfigSource) -> Result<Self, StartError> {
        Self::start_with_clock(source, Arc::new(crate::pipeline::rollout::SystemClock::default())).await
    }

    /// As [`start`](Self::start), with rollout decisions reading `clock` (tests use a manual one).
    pub async fn start_with_clock(
        source: ConfigSource,
        clock: Arc<dyn crate::pipeline::rollout::Clock>,
    ) -> Result<Self, StartError> {
        let compiler = Compiler::with_clock(clock);
        let snap = compiler.compile(&source.read()?, 1, &Carried::default())?;
        let metrics = compiler.metrics.clone();

        let mut bound = Vec::new();
        let mut sockets = Vec::new();
        for l in &snap.config.listeners {
            let sock = TcpListener::bind(l.bind)
                .await
                .map_err(|source| StartError::Bind {
                    name: l.name.clone(),
                    addr: l.bind,
                    source,
                })?;
            bound.push((l.name.clone(), l.bind));
            sockets.push((l.name.clone(), sock));
        }
        let admin_bind = snap.config.admin.bind;
        let admin_sock = TcpListener::bind(admin_bind)
            .await
            .map_err(|source| StartError::Bind {
                name: "admin".into(),
                addr: admin_bind,
                source,
            })?;
        let admin_addr = admin_sock.local_addr().unwrap_or(admin_bind);

        let admin_token = std::env::var(&snap.config.admin.token_env)
            .ok()
            .filter(|t| !t.is_empty());
        if admin_token.is_none() {
            tracing::info!(
                env = %snap.config.admin.token_env,
                "no admin token set: POST /admin/reload is disabled (SIGHUP and file changes still reload)"
            );
        }
        let access_log = snap
            .config
            .log
            .access_log
            .then(|| AccessLog::spawn(metrics.counter(ACCESS_LOG_DROPPED, &[])));
        let traces = match &snap.tracing {
            None => None,
            Some(t) => Some(crate::telemetry::traces::Tracing::start(t).map_err(StartError::Traces)?),
        };
        let reload_metrics = ReloadMetrics {
            ok: metrics.counter(CONFIG_RELOADS_TOTAL, &[("result", "success")]),
            failed: metrics.counter(CONFIG_RELOADS_TOTAL, &[("result", "failure")]),
            last_success: metrics.gauge(CONFIG_LAST_RELOAD_SUCCESS, &[]),
        };
        reload_metrics.last_success.set(1.0);
        let watch_enabled = snap.config.reload.watch;
        let status = ReloadStatus::initial(&snap);
        let snap = Arc::new(snap);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::new(snap.clone()),
            compiler,
            access_log,
            traces,
            source,
            status: parking_lot::Mutex::new(status),
            reload_lock: tokio::sync::Mutex::new(()),
            reload_metrics,
            bound_listeners: bound,
            admin_bind,
            admin_token,
            ready: AtomicBool::new(false),
        });

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut addrs = Vec::new();
        let mut listeners = Vec::new();
        for (name, sock) in sockets {
            let addr = sock.local_addr().map_err(|source| StartError::Bind {
                name: name.clone(),
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
            tracing::info!(listener = %name, %addr, "listening");
            addrs.push((name.clone(), addr));
            listeners.push(tokio::spawn(crate::server::listener::serve(
                sock,
                Arc::from(name.as_str()),
                shared.clone(),
                shutdown_rx.clone(),
            )));
        }
        tracing::info!(%admin_addr, "admin listening");
        let mut background = vec![tokio::spawn(crate::admin::serve(
            admin_sock,
            shared.clone(),
            shutdown_rx.clone(),
        ))];
        background.push(shared.metrics().spawn_upkeep(Duration::from_secs(5)));
        background.push(tokio::spawn(refresh_cert_expiry(shared.clone())));
        let watcher = if watch_enabled {
            Some(reload::spawn_watcher(shared.clone())?)
        } else {
            None
        };
        reload::activate(&shared, snap);
        shared.ready.store(true, Ordering::Release);

        Ok(Self {
            shared,
            addrs,
            admin_addr,
            shutdown_tx,
            listeners,
            background,
            _watcher: watcher,
        })
    }

    /// The bound address of listener `name` (useful with port 0).
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Reloads the config now, as SIGHUP does.
    pub async fn reload(&self, trigger: &str) -> Result<u64, ConfigErrors> {
        reload::reload(&self.shared, trigger).await
    }

    /// A handle that triggers the drain from elsewhere (a signal handler) while `wait` runs.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            tx: self.shutdown_tx.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Stops accepting, lets in-flight requests finish (up to `shutdown.drain_timeout`), then stops.
    pub async fn shutdown(self) {
        self.shutdown_handle().trigger();
        self.wait().await;
    }

    /// Waits until a shutdown has been triggered and every listener has drained.
    pub async fn wait(self) {
        for l in self.listeners {
            let _ = l.await;
        }
        for b in self.background {
            b.abort();
        }
        if let Some(log) = &self.shared.access_log {
            let log = log.clone();
            let _ = tokio::task::spawn_blocking(move || log.close()).await;
        }
        if self.shared.traces.is_some() {
            let shared = self.shared.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(t) = &shared.traces {
                    t.shutdown_blocking();
                }
            })
            .await;
        }
        tracing::info!("ficus stopped");
    }
}

#[derive(Clone)]
pub struct ShutdownHandle {
    tx: watch::Sender<bool>,
    shared: Arc<Shared>,
}

impl ShutdownHandle {
    pub fn trigger(&self) {
        self.shared.ready.store(false, Ordering::Release);
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        let _ = self.tx.send(true);
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

async fn refresh_cert_expiry(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        for l in shared.snapshot.load().listeners.values() {
            for c in &l.certs {
                c.refresh(now);
            }
        }
    }
}
