//! The replay workers: one task per (route, partition) in each instance, of which the one that
//! holds the partition's lease sends the partition's writes, oldest first (see the module doc
//! of `pipeline::writes` for the design).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::BodyExt as _;

use super::store::{self, Entry, FinalAnswer, State, Status, StoreError, Stored, GROUP};
use super::{RouteWrites, WriteQueue, MAX_KEPT_ANSWER};
use crate::error::ProxyError;
use crate::pipeline::route::Route;

/// Sets the lease's value and TTL only while it is still this holder's.
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

pub fn spawn(rt: &tokio::runtime::Handle, q: &Arc<WriteQueue>, route: &str) {
    for part in 0..q.cfg.partitions.max(1) {
        rt.spawn(worker(Arc::downgrade(q), route.to_string(), part));
    }
    rt.spawn(gauges(Arc::downgrade(q), route.to_string()));
}

/// A held lease: renewed in the background until dropped; `lost` once a renewal failed.
struct Lease {
    token: String,
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// A partition's state in this instance.
#[derive(Default)]
struct Partition {
    lease: Option<Lease>,
    group_ready: bool,
    /// The head write's next try: `(entry id, not before)`.
    retry: Option<(String, Instant)>,
    /// Connect errors in a row (not counted as attempts; they only back off).
    unreachable: u32,
}

enum Step {
    /// More work right away.
    Busy,
    /// Nothing to do here now.
    Idle,
    /// The head write waits (backoff, the upstream is down, another instance's entry idles).
    Wait(Duration),
}

async fn worker(q: Weak<WriteQueue>, route: String, part: u32) {
    let mut st = Partition::default();
    loop {
        let Some(queue) = q.upgrade() else { return };
        let poll = queue.cfg.poll_interval;
        let wait = match queue.step(&q, &route, part, &mut st).await {
            Ok(Step::Busy) => Duration::ZERO,
            Ok(Step::Idle) => jitter(poll),
            Ok(Step::Wait(d)) => d.min(poll * 5),
            Err(e) => {
                tracing::debug!(route, partition = part, error = %e, "write replay: Redis failed");
                jitter(poll.max(Duration::from_millis(500)))
            }
        };
        if matches!(
            st.lease.as_ref().map(|l| l.lost.load(Ordering::Acquire)),
            Some(true)
        ) {
            tracing::warn!(
                route,
                partition = part,
                "write replay: lost the partition's lease"
            );
            st.lease = None;
            st.retry = None;
        }
        drop(queue);
        if wait.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Between half and one and a half `d`: instances that poll together drift apart.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64())
}

impl WriteQueue {
    async fn step(
        &self,
        me: &Weak<WriteQueue>,
        name: &str,
        part: u32,
        st: &mut Partition,
    ) -> Result<Step, StoreError> {
        let Some(route) = self.route(name) else {
            self.release(name, part, st).await;
            return Ok(Step::Idle);
        };
        let Some(w) = &route.buffer_writes else {
            return Ok(Step::Idle);
        };
        let qkey = self.store.queue_key(name, part);
        if st.lease.is_none() {
            // The idle path: one XLEN per poll (finished entries are deleted).
            let len: u64 = self.store.run(redis::cmd("XLEN").arg(&qkey)).await?;
            if len == 0 {
                return Ok(Step::Idle);
            }
            if !self.acquire(me, name, part, st).await? {
                return Ok(Step::Idle);
            }
        }
        if !st.group_ready {
            let made: Result<(), StoreError> = self
                .store
                .run(
                    redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(&qkey)
                        .arg(GROUP)
                        .arg("0")
                        .arg("MKSTREAM"),
                )
                .await;
            match made {
                Ok(()) => {}
                Err(StoreError::Redis(e)) if e.to_string().contains("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
            st.group_ready = true;
        }

        // The partition's oldest unfinished write, whoever holds it.
        let oldest: Vec<(String, String, u64, u64)> = self
            .store
            .run(
                redis::cmd("XPENDING")
                    .arg(&qkey)
                    .arg(GROUP)
                    .arg("-")
                    .arg("+")
                    .arg(1),
            )
            .await?;
        let entry = match oldest.into_iter().next() {
            Some((id, owner, _, _)) if owner == self.consumer => {
                let v: redis::Value = self
                    .store
                    .run(redis::cmd("XRANGE").arg(&qkey).arg(&id).arg(&id))
                    .await?;
                match store::entries(&v).into_iter().next() {
                    Some(e) => e,
                    None => {
                        // Deleted under us (an admin, or a finished write's XDEL raced its XACK).
                        self.ack(&qkey, &id).await?;
                        return Ok(Step::Busy);
                    }
                }
            }
            Some((id, owner, idle, _)) => {
                let min_idle = self.cfg.claim_idle.as_millis() as u64;
                if idle < min_idle {
                    return Ok(Step::Wait(Duration::from_millis(min_idle - idle)));
                }
                let v: redis::Value = self
                    .store
                    .run(
                        redis::cmd("XAUTOCLAIM")
                            .arg(&qkey)
                            .arg(GROUP)
                            .arg(&self.consumer)
                            .arg(min_idle)
                            .arg(&id)
                            .arg("COUNT")
                            .arg(1),
                    )
                    .await?;
                tracing::info!(
                    route = name,
                    partition = part,
                    id,
                    from = owner,
                    "write replay: took over an abandoned write"
                );
                let redis::Value::Array(parts) = &v else {
                    return Ok(Step::Busy);
                };
                match parts
                    .get(1)
                    .map(store::entries)
                    .and_then(|e| e.into_iter().next())
                {
                    Some(e) => e,
                    None => return Ok(Step::Busy),
                }
            }
            None => {
                let v: redis::Value = self
                    .store
                    .run(
                        redis::cmd("XREADGROUP")
                            .arg("GROUP")
                            .arg(GROUP)
                            .arg(&self.consumer)
                            .arg("COUNT")
                            .arg(64)
                            .arg("STREAMS")
                            .arg(&qkey)
                            .arg(">"),
                    )
                    .await?;
                if matches!(v, redis::Value::Nil) {
                    self.release(name, part, st).await;
                    return Ok(Step::Idle);
                }
                return Ok(Step::Busy);
            }
        };
        self.process(&route, w, &qkey, entry, st).await
    }

    async fn acquire(
        &self,
        me: &Weak<WriteQueue>,
        name: &str,
        part: u32,
        st: &mut Partition,
    ) -> Result<bool, StoreError> {
        let key = self.store.lease_key(name, part);
        let token = format!("{}-{}", self.consumer, uuid::Uuid::new_v4().simple());
        let ttl = self.cfg.claim_idle.as_millis().max(3) as u64;
        let set: Option<String> = self
            .store
            .run(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl),
            )
            .await?;
        if set.is_none() {
            return Ok(false);
        }
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (me, lost, token, key) = (me.clone(), lost.clone(), token.clone(), key.clone());
            tokio::spawn(async move {
                let script = redis::Script::new(RENEW);
                let every = Duration::from_millis((ttl / 3).max(1));
                loop {
                    tokio::time::sleep(every).await;
                    let Some(q) = me.upgrade() else { return };
                    let renewed: Result<i64, _> =
                        q.store.script(&script, &key, &[&token, &ttl.to_string()]).await;
                    if !matches!(renewed, Ok(1)) {
                        lost.store(true, Ordering::Release);
                        return;
                    }
                }
            })
        };
        st.lease = Some(Lease { token, lost, renewer });
        st.retry = None;
        Ok(true)
    }

    async fn release(&self, name: &str, part: u32, st: &mut Partition) {
        if let Some(lease) = st.lease.take() {
            let key = self.store.lease_key(name, part);
            let _ = self
                .store
                .script::<i64>(&redis::Script::new(RELEASE), &key, &[&lease.token])
                .await;
        }
        st.retry = None;
    }

    async fn ack(&self, qkey: &str, id: &str) -> Result<(), StoreError> {
        self.store
            .run::<i64>(redis::cmd("XACK").arg(qkey).arg(GROUP).arg(id))
            .await?;
        self.store
            .run::<i64>(redis::cmd("XDEL").arg(qkey).arg(id))
            .await?;
        Ok(())
    }

    /// One step for the head write `entry`: skip it if finished, dead-letter it if too old or
    /// tried too often, wait for its backoff or the upstream, or send it.
    async fn process(
        &self,
        route: &Route,
        w: &RouteWrites,
        qkey: &str,
        entry: Entry,
        st: &mut Partition,
    ) -> Result<Step, StoreError> {
        let entry_id = entry.0.clone();
        let stored: Stored = match store::field(&entry, "w").map(serde_json::from_str) {
            Some(Ok(s)) => s,
            _ => {
                tracing::error!(route = %route.name, entry = entry_id, "write replay: unreadable queue entry, dead-lettered");
                let fields: Vec<&str> = entry
                    .1
                    .iter()
                    .flat_map(|(k, v)| [k.as_str(), v.as_str()])
                    .collect();
                let mut cmd = redis::cmd("XADD");
                cmd.arg(self.store.dlq_key(&route.name))
                    .arg("*")
                    .arg("id")
                    .arg("")
                    .arg("unreadable")
                    .arg("1");
                for f in fields {
                    cmd.arg(f);
                }
                self.store.run::<String>(&cmd).await?;
                self.ack(qkey, &entry_id).await?;
                return Ok(Step::Busy);
            }
        };
        let ttl = self.status_ttl(w);
        let mut status = self
            .store
            .status(&stored.id)
            .await?
            .unwrap_or_else(|| Status::queued(&stored));
        if status.state.finished() {
            // Finished by an instance that died before acknowledging it: never sent again.
            self.ack(qkey, &entry_id).await?;
            st.retry = None;
            return Ok(Step::Busy);
        }
        if store::now_ms().saturating_sub(stored.queued_at) > w.max_age.as_millis() as u64 {
            let reason = format!(
                "not done within max_age ({})",
                humantime::format_duration(w.max_age)
            );
            return self
                .dead_letter(route, w, qkey, &entry_id, &stored, status, reason, st)
                .await;
        }
        if let Some((id, at)) = &st.retry {
            if *id == entry_id && Instant::now() < *at {
                return Ok(Step::Wait(*at - Instant::now()));
            }
        }
        let side = if stored.side == "modern" {
            crate::pipeline::context::Side::Modern
        } else {
            crate::pipeline::context::Side::Legacy
        };
        let upstream = route.upstream_for(side).clone();
        if upstream.health_check.is_some() && upstream.endpoints.status().iter().all(|e| !e.healthy) {
            // The health check will say when it is back; no attempt is spent on it.
            return Ok(Step::Wait(self.cfg.poll_interval));
        }

        let Some((parts, body, pq)) = request_of(&stored) else {
            let reason = "the queued request cannot be rebuilt".to_string();
            return self
                .dead_letter(route, w, qkey, &entry_id, &stored, status, reason, st)
                .await;
        };
        status.state = State::Replaying;
        status.updated_at = store::now_ms();
        self.store.put_status(&stored.id, &status, ttl).await?;
        w.metrics.replayed.increment(1);
        let result = crate::pipeline::forward::send_stored(&upstream, parts, body, pq).await;
        let transform = route.transform_for(side).filter(|_| stored.translated);
        let result = match result {
            Ok(resp) => Ok(answer(resp, transform.map(|t| &**t), &route.name, &stored.id).await),
            Err(e) => Err(e),
        };
        let failure = match result {
            Ok((parts, body, truncated)) if !parts.status.is_server_error() => {
                let code = parts.status.as_u16();
                let content_type = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                status.state = State::Done;
                status.result = Some(FinalAnswer {
                    status: code,
                    content_type,
                    body: base64::engine::general_purpose::STANDARD.encode(&body),
                    truncated,
                });
                status.updated_at = store::now_ms();
                self.store.put_status(&stored.id, &status, ttl).await?;
                self.ack(qkey, &entry_id).await?;
                w.metrics.succeeded.increment(1);
                st.retry = None;
                st.unreachable = 0;
                tracing::debug!(route = %route.name, id = stored.id, status = code, "write replayed");
                return Ok(Step::Busy);
            }
            Ok((parts, _, _)) => Some((
                format!("the upstream answered {}", parts.status),
                Some(parts.status.as_u16()),
            )),
            Err(
                e @ (ProxyError::UpstreamUnreachable { .. }
                | ProxyError::CircuitOpen { .. }
                | ProxyError::UpstreamOverloaded { .. }),
            ) => {
                // Not the write's fault: wait for the upstream, spend no attempt.
                w.metrics.failed.increment(1);
                st.unreachable = st.unreachable.saturating_add(1);
                let wait = match &e {
                    ProxyError::CircuitOpen { retry_after_secs, .. } => {
                        Duration::from_secs(*retry_after_secs).min(w.backoff(st.unreachable))
                    }
                    _ => w.backoff(st.unreachable),
                };
                status.state = State::Queued;
                status.updated_at = store::now_ms();
                self.store.put_status(&stored.id, &status, ttl).await?;
                st.retry = Some((entry_id, Instant::now() + wait));
                return Ok(Step::Wait(wait));
            }
            Err(e) => Some((e.to_string(), None)),
        };
        let (error, code) = failure.unwrap_or_default();
        w.metrics.failed.increment(1);
        status.attempts += 1;
        status.push_error(error.clone(), code);
        status.updated_at = store::now_ms();
        if status.attempts >= w.max_attempts {
            let reason = format!("{} attempts failed; the last: {error}", status.attempts);
            return self
                .dead_letter(route, w, qkey, &entry_id, &stored, status, reason, st)
                .await;
        }
        status.state = State::Queued;
        self.store.put_status(&stored.id, &status, ttl).await?;
        let wait = w.backoff(status.attempts);
        tracing::info!(route = %route.name, id = stored.id, attempt = status.attempts, error, "write replay failed; retrying later");
        st.retry = Some((entry_id, Instant::now() + wait));
        Ok(Step::Wait(wait))
    }

    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        route: &Route,
        w: &RouteWrites,
        qkey: &str,
        entry_id: &str,
        stored: &Stored,
        mut status: Status,
        reason: String,
        st: &mut Partition,
    ) -> Result<Step, StoreError> {
        let json = serde_json::to_string(stored).map_err(|e| StoreError::Record(e.to_string()))?;
        let dlq_id: String = self
            .store
            .run(
                redis::cmd("XADD")
                    .arg(self.store.dlq_key(&route.name))
                    .arg("*")
                    .arg("id")
                    .arg(&stored.id)
                    .arg("w")
                    .arg(json),
            )
            .await?;
        status.state = State::DeadLettered;
        status.dlq_entry = Some(dlq_id);
        status.dead_letter_reason = Some(reason.clone());
        status.updated_at = store::now_ms();
        self.store
            .put_status(&stored.id, &status, self.status_ttl(w))
            .await?;
        self.ack(qkey, entry_id).await?;
        w.metrics.dead_lettered.increment(1);
        st.retry = None;
        tracing::warn!(route = %route.name, id = stored.id, reason, "write dead-lettered");
        Ok(Step::Busy)
    }
}

/// The stored request as parts, body and path, or `None` if it no longer parses.
pub fn request_of(s: &Stored) -> Option<(http::request::Parts, Bytes, http::uri::PathAndQuery)> {
    let b64 = &base64::engine::general_purpose::STANDARD;
    let body = Bytes::from(b64.decode(s.body.as_bytes()).ok()?);
    let pq = http::uri::PathAndQuery::try_from(s.path.as_str()).ok()?;
    let mut req = Request::new(());
    *req.method_mut() = Method::from_bytes(s.method.as_bytes()).ok()?;
    *req.uri_mut() = http::Uri::from(pq.clone());
    for h in &s.headers {
        let name = HeaderName::from_bytes(h.n.as_bytes()).ok()?;
        let value = match (&h.v, &h.b) {
            (Some(v), _) => HeaderValue::from_str(v).ok()?,
            (None, Some(b)) => HeaderValue::from_bytes(&b64.decode(b.as_bytes()).ok()?).ok()?,
            (None, None) => continue,
        };
        req.headers_mut().append(name, value);
    }
    Some((req.into_parts().0, body, pq))
}

/// The upstream's answer as the client would have got it: translated back by the side's
/// transform when the request was queued translated (a SOAP Fault answered 500 can become the
/// 404 its `fault_status` says, which makes the write done), as received otherwise or when it
/// was too large to keep whole.
async fn answer(
    resp: http::Response<hyper::body::Incoming>,
    transform: Option<&crate::translate::Transform>,
    route: &str,
    id: &str,
) -> (http::response::Parts, Vec<u8>, bool) {
    let (mut parts, body) = resp.into_parts();
    let (body, truncated) = read_answer(body).await;
    let Some(t) = transform.filter(|_| !truncated) else {
        return (parts, body, truncated);
    };
    let (status, headers) = (parts.status, parts.headers.clone());
    match crate::translate::driver::response_now(t, &mut parts, Bytes::from(body.clone())) {
        Ok(b) => (parts, b.to_vec(), false),
        Err(e) => {
            tracing::warn!(route, id, error = %e, "write replay: the answer could not be translated; kept as received");
            (parts.status, parts.headers) = (status, headers);
            (parts, body, false)
        }
    }
}

/// The answer's body, its first [`MAX_KEPT_ANSWER`] bytes, within ten seconds.
async fn read_answer(mut body: hyper::body::Incoming) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut truncated = false;
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                let room = MAX_KEPT_ANSWER.saturating_sub(out.len());
                if data.len() > room {
                    out.extend_from_slice(&data[..room]);
                    truncated = true;
                    break;
                }
                out.extend_from_slice(&data);
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    (out, truncated)
}

/// `ficus_writes_queue_depth` and `ficus_writes_oldest_age_seconds` of one route, every second.
async fn gauges(q: Weak<WriteQueue>, route: String) {
    loop {
        {
            let Some(queue) = q.upgrade() else { return };
            if let Some(r) = queue.route(&route) {
                if let Some(w) = &r.buffer_writes {
                    let mut depth = 0u64;
                    let mut oldest: Option<u64> = None;
                    let mut ok = true;
                    for part in 0..queue.cfg.partitions.max(1) {
                        let key = queue.store.queue_key(&route, part);
                        match queue.store.run::<u64>(redis::cmd("XLEN").arg(&key)).await {
                            Ok(n) => depth += n,
                            Err(_) => {
                                ok = false;
                                break;
                            }
                        }
                        let first: Result<redis::Value, _> = queue
                            .store
                            .run(
                                redis::cmd("XRANGE")
                                    .arg(&key)
                                    .arg("-")
                                    .arg("+")
                                    .arg("COUNT")
                                    .arg(1),
                            )
                            .await;
                        if let Some(ms) = first
                            .ok()
                            .and_then(|v| store::entries(&v).into_iter().next())
                            .and_then(|e| store::id_ms(&e.0))
                        {
                            oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
                        }
                    }
                    if ok {
                        w.metrics.depth.set(depth as f64);
                        let age = oldest.map_or(0, |ms| store::now_ms().saturating_sub(ms));
                        w.metrics.oldest_age.set(age as f64 / 1000.0);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
