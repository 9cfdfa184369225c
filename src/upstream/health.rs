//! Active HTTP health checks: every `interval`, each endpoint of an upstream gets a GET on the
//! configured path; `healthy_threshold` passes in a row mark it healthy, `unhealthy_threshold`
//! failures in a row unhealthy. Unhealthy endpoints get no traffic (unless none is healthy).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::balance::EndpointSet;
use crate::config::file::HealthCheckConfig;

/// Starts the checker of every upstream in `snap` that has one and whose endpoint set (kept
/// across reloads) has none running yet. A checker stops once its endpoint set is dropped.
pub fn start<'a>(upstreams: impl Iterator<Item = &'a Arc<super::Upstream>>) {
    for u in upstreams {
        let Some(cfg) = &u.health_check else { continue };
        // A running checker picks this up on its next round: a reload that replaced only the
        // certificate files keeps the endpoint set (and its checker) but changes the TLS settings.
        u.endpoints.probe_tls.store(u.tls.clone());
        if u.endpoints.health_started.swap(true, Ordering::AcqRel) {
            continue;
        }
        tokio::spawn(run(Arc::downgrade(&u.endpoints), cfg.clone()));
    }
}

async fn run(set: Weak<EndpointSet>, cfg: HealthCheckConfig) {
    let build =
        |tls: Option<&super::tls::UpstreamTls>| -> Client<HttpsConnector<HttpConnector>, Empty<Bytes>> {
            Client::builder(TokioExecutor::new()).build(super::tls::connector(tls, cfg.timeout))
        };
    let mut fingerprint = None;
    let mut client = build(None);
    let expected: Arc<[u16]> = cfg.expected_statuses.clone().into();
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(set) = set.upgrade() else { return };
        let tls = set.probe_tls.load_full();
        let now = tls.as_ref().map(|t| t.fingerprint);
        if now != fingerprint {
            client = build(tls.as_deref());
            fingerprint = now;
        }
        let checks: Vec<_> = set
            .states()
            .iter()
            .map(|e| {
                let uri = format!("{}{}", e.endpoint, cfg.path);
                let (client, expected, timeout) = (client.clone(), expected.clone(), cfg.timeout);
                async move {
                    let Ok(req) = Request::get(uri)
                        .header("user-agent", "ficus-health-check")
                        .body(Empty::new())
                    else {
                        return false;
                    };
                    match tokio::time::timeout(timeout, client.request(req)).await {
                        Ok(Ok(resp)) => expected.contains(&resp.status().as_u16()),
                        _ => false,
                    }
                }
            })
            .collect();
        let results = futures_util::future::join_all(checks).await;
        for (i, passed) in results.into_iter().enumerate() {
            set.check_result(i, passed, cfg.healthy_threshold, cfg.unhealthy_threshold);
        }
    }
}
