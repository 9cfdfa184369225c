//! The `ficus` binary as users run it: `--version`, `check`, `run` with signals (SIGHUP reload,
//! SIGTERM drain), the admin token from the environment, 1 GiB bodies in bounded memory, and `demo`.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_ficus");

struct Process {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Process {
    /// Starts `ficus run` and waits for its "listening" log lines to learn the bound ports.
    fn run(config: &Path, env: &[(&str, &str)]) -> Self {
        Self::run_with_stdout(config, env, Stdio::null())
    }

    fn run_with_stdout(config: &Path, env: &[(&str, &str)], stdout: Stdio) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(stdout)
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn ficus");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let fields = &v["fields"];
                let addr = fields["addr"]
                    .as_str()
                    .or(fields["admin_addr"].as_str())
                    .map(str::to_string);
                if let (Some("listening" | "admin listening"), Some(addr)) =
                    (fields["message"].as_str(), addr)
                {
                    let _ = tx.send((fields["message"].as_str().unwrap_or_default().to_string(), addr));
                }
            }
        });
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() || admin.is_none() {
            let (msg, a) = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("ficus announced its addresses");
            let a: SocketAddr = a.parse().expect("address");
            if msg == "listening" {
                addr = Some(a);
            } else {
                admin = Some(a);
            }
        }
        Self {
            child,
            addr: addr.unwrap(),
            admin: admin.unwrap(),
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits up to `within` for the process to exit; returns its exit status if it did.
    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Peak resident memory of the process so far, in bytes (Linux).
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, yaml: &str) -> std::path::PathBuf {
    let p = dir.join("ficus.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

/// `ficus check --config <p>`.
fn check(p: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(p)
        .output()
        .unwrap()
}

#[test]
fn version_is_printed() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ficus {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_accepts_a_valid_config_and_the_shipped_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(dir.path(), &basic_config("http://127.0.0.1:9"));
    let out = check(&p);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    for shipped in [
        "config/ficus.example.yaml",
        "config/demo.yaml",
        "deploy/k8s/ficus.yaml",
    ] {
        let out = check(Path::new(shipped));
        assert!(
            out.status.success(),
            "{shipped}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn check_reports_every_problem_as_file_line_path_reason() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "\
listeners:
  - name: main
    bind: 127.0.0.1:0
upstreams:
  app:
    endpoints: ['ftp://x']
    timeouts: { connect: 0s }
routes:
  - name: r
    match: { path_prefix: 'no-slash' }
    upstream: ghost
";
    let p = write_config(dir.path(), yaml);
    let out = check(&p);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let file = p.display().to_string();
    for expected in [
        format!("{file}:6: upstreams.app.endpoints[0]: "),
        format!("{file}:7: upstreams.app.timeouts.connect: "),
        format!("{file}:10: routes[0].match.path_prefix: "),
        format!("{file}:11: routes[0].upstream: no upstream named `ghost`"),
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&expected)),
            "missing {expected:?} in:\n{text}"
        );
    }

    // Shape errors (unknown key) are located too.
    let p = write_config(
        dir.path(),
        "listeners:\n  - name: main\n    bind: 127.0.0.1:0\n    max_conns: 5\n",
    );
    let out = check(&p);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!(
            "{}:4: listeners[0].max_conns: unknown field",
            p.display()
        )),
        "{text}"
    );
}

#[test]
fn check_names_the_new_spelling_of_every_old_request_key() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "\
listeners:
  - name: main
    bind: 127.0.0.1:0
upstreams:
  app:
    endpoints: ['http://127.0.0.1:9', 'http://127.0.0.1:10']
    balance: consistent-hash
    hash_on: client-ip
rate_limits:
  policies:
    per-key: { key: [route, api-key, claim.sub], rate: 10/s }
routes:
  - name: r
    rate_limit: [per-key]
    idempotency: { scope: client-cert }
    migration:
      legacy: { upstream: app }
      modern: { upstream: app }
      sticky: client-ip
";
    let p = write_config(dir.path(), yaml);
    let out = check(&p);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "old spellings still load:\n{text}");
    let file = p.display().to_string();
    for expected in [
        format!("{file}:8: upstreams.app.hash_on: warning: `client-ip` is the old spelling; write `client_ip`"),
        format!("{file}:11: rate_limits.policies.per-key.key[1]: warning: `api-key` is the old spelling; write `api_key`"),
        format!("{file}:11: rate_limits.policies.per-key.key[2]: warning: `claim.sub` is the old spelling; write `jwt.sub`"),
        format!("{file}:15: routes[0].idempotency.scope[0]: warning: `client-cert` is the old spelling; write `client_cert`"),
        format!("{file}:19: routes[0].migration.sticky: warning: `client-ip` is the old spelling; write `client_ip`"),
    ] {
        assert!(text.lines().any(|l| l == expected), "missing {expected:?} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let slow = Upstream::start(|req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        echo_response(req, "slow").await
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = basic_config(&slow.url()).replace(
        "reload: { watch: false }",
        "reload: { watch: false }\nshutdown: { drain_timeout: 10s }",
    );
    let mut p = Process::run(&write_config(dir.path(), &yaml), &[]);
    let url = format!("http://{}/drain", p.addr);
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn({
                let url = url.clone();
                async move { get(&url).await }
            })
        })
        .collect();
    // All four are at the upstream: the drain has something to wait for.
    assert!(eventually(Duration::from_secs(10), || async { slow.hits() == 4 }).await);
    p.signal("TERM");
    for r in in_flight {
        let a = r.await.unwrap();
        assert_eq!(a.status, 200, "an in-flight request was dropped: {}", a.text());
    }
    let status = tokio::task::spawn_blocking(move || {
        let s = p.wait_exit(Duration::from_secs(10));
        (s, p)
    })
    .await
    .unwrap();
    let (exit, p) = status;
    assert!(exit.expect("ficus exited after draining").success());
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(p.addr).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_at_the_deadline() {
    let stuck = Upstream::start(|_req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(empty())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = basic_config(&stuck.url()).replace(
        "reload: { watch: false }",
        "reload: { watch: false }\nshutdown: { drain_timeout: 500ms }",
    );
    let mut p = Process::run(&write_config(dir.path(), &yaml), &[]);
    let url = format!("http://{}/", p.addr);
    let _in_flight =
        tokio::spawn(async move { client().request(Request::get(url).body(empty()).unwrap()).await });
    assert!(eventually(Duration::from_secs(10), || async { stuck.hits() == 1 }).await);
    let started = Instant::now();
    p.signal("TERM");
    let exit = tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(exit.is_some(), "ficus did not exit after the drain deadline");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_request_in_flight_do_not_hold_up_the_drain() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    // Both timeouts far beyond the wait below: only the drain itself can close these.
    let yaml = with_limits(&up.url(), "header_read_timeout: 60s, idle_timeout: 60s").replace(
        "reload: { watch: false }",
        "reload: { watch: false }\nshutdown: { drain_timeout: 60s }",
    );
    let mut p = Process::run(&write_config(dir.path(), &yaml), &[]);
    // A spare connection that never sends (hyper's client pool opens these), and a keep-alive
    // connection idle after one answer.
    let mut silent = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    idle.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    p.signal("TERM");
    let exit = tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(
        exit.is_some_and(|s| s.success()),
        "the drain waited on connections with nothing in flight"
    );
    // Both were closed by ficus, not left half-open.
    for conn in [&mut silent, &mut idle] {
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a connection stayed open after ficus exited");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_the_env_token_reload_the_config() {
    let a = Upstream::echo_named("a").await;
    let b = Upstream::echo_named("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &basic_config(&a.url()));
    let p = Process::run(&path, &[("FICUS_ADMIN_TOKEN", "from-env")]);
    let url = format!("http://{}/", p.addr);
    assert_eq!(get(&url).await.echoed().name, "a");

    write_config(dir.path(), &basic_config(&b.url()));
    p.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(&url).await.echoed().name == "b"
        })
        .await
    );

    write_config(dir.path(), &basic_config(&a.url()));
    let req = Request::post(format!("http://{}/admin/reload", p.admin))
        .header("authorization", "Bearer from-env")
        .body(empty())
        .unwrap();
    assert_eq!(send(&client(), req).await.status, 200);
    assert_eq!(get(&url).await.echoed().name, "a");
    let status = get(&format!("http://{}/admin/config", p.admin)).await.json();
    assert_eq!(status["version"], 3, "{status}");
}

/// 1 GiB each way through the real process, whose peak RSS must stay far below the body size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_and_download_stream_in_bounded_memory() {
    const GIB: u64 = 1 << 30;
    const CHUNK: usize = 256 * 1024;
    let up = Upstream::start(|req: Request<Incoming>| async move {
        if req.method() == http::Method::GET {
            let chunk = Bytes::from(vec![b'x'; CHUNK]);
            let stream = futures_util::stream::iter(
                (0..GIB / CHUNK as u64)
                    .map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
            );
            Response::new(http_body_util::StreamBody::new(stream).boxed_unsync())
        } else {
            echo_response(req, "").await
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = with_limits(&up.url(), "max_body_bytes: 2GiB");
    let p = Process::run(&write_config(dir.path(), &yaml), &[]);
    let c = client();
    // What the process needs before any body flows (the binary's pages, the runtime, the
    // config) grows with the code, not with the body: the bound is on what streaming adds.
    let started = p.peak_rss();

    let resp = c
        .request(
            Request::get(format!("http://{}/download", p.addr))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, GIB);

    let chunk = Bytes::from(vec![b'y'; CHUNK]);
    let stream = futures_util::stream::iter(
        (0..GIB / CHUNK as u64)
            .map(move |_| Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk.clone()))),
    );
    let req = Request::post(format!("http://{}/upload", p.addr))
        .body(http_body_util::StreamBody::new(stream).boxed_unsync())
        .unwrap();
    let a = send(&c, req).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.echoed().body_len, GIB);

    let peak = p.peak_rss();
    eprintln!(
        "ficus peak RSS after 1 GiB each way: {} MiB ({} MiB before any body)",
        peak >> 20,
        started >> 20
    );
    assert!(
        peak.saturating_sub(started) < 32 << 20,
        "ficus grew from {} to {} MiB while streaming 1 GiB",
        started >> 20,
        peak >> 20
    );
}

/// `ficus demo` with every part on a free port (`--listen 127.0.0.1:0` …), so the tests pass
/// next to a demo someone runs on the default ports; its addresses come from the banner.
struct Demo {
    child: Child,
    public: SocketAddr,
    admin: SocketAddr,
    idp: SocketAddr,
}

impl Demo {
    fn start() -> Self {
        let mut child = Command::new(BIN)
            .arg("demo")
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args([
                "--legacy",
                "127.0.0.1:0",
                "--modern",
                "127.0.0.1:0",
                "--idp",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Reads the whole stderr, so the demo never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let line = line.trim();
                for (label, key) in [
                    ("ficus ", "public"),
                    ("admin ", "admin"),
                    ("demo IdP JWKS ", "idp"),
                ] {
                    if let Some(url) = line.strip_prefix(label).map(str::trim) {
                        if let Some(addr) = url.strip_prefix("http://") {
                            let addr = addr.split('/').next().unwrap_or_default().to_string();
                            let _ = tx.send((key, addr));
                        }
                    }
                }
            }
        });
        let mut found = std::collections::HashMap::new();
        while found.len() < 3 {
            let (key, addr) = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("the demo printed its addresses");
            found.insert(key, addr.parse::<SocketAddr>().unwrap());
        }
        Self {
            child,
            public: found["public"],
            admin: found["admin"],
            idp: found["idp"],
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    /// SIGINT, as Ctrl-C; true when it exited within 10 s.
    async fn interrupt(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_legacy_and_modern_backends() {
    let mut demo = Demo::start();
    let legacy = get(&demo.url("/api/customers/42")).await;
    assert_eq!(legacy.headers["x-served-by"], "legacy");
    assert!(legacy.text().starts_with("<response>"), "{}", legacy.text());
    // The customers route is visibly limited: 5 at once per client, then 429 with Retry-After.
    assert_eq!(legacy.headers["x-ratelimit-remaining"], "4");
    assert!(legacy.headers.contains_key("ratelimit-policy"));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(&demo.url("/api/customers/42")).await.status.as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // The demo's orders route is mid-migration; the beta-tester cohort always gets modern.
    let req = Request::get(demo.url("/api/orders/7"))
        .header("x-user", "beta-tester")
        .body(empty())
        .unwrap();
    let modern = send(&client(), req).await;
    assert_eq!(modern.headers["x-served-by"], "modern");
    assert_eq!(modern.json()["served_by"], "modern");
    // A sticky user stays on one side.
    let mut sides = std::collections::HashSet::new();
    for _ in 0..5 {
        let req = Request::get(demo.url("/api/orders/7"))
            .header("x-user", "alice")
            .body(empty())
            .unwrap();
        sides.insert(
            send(&client(), req).await.headers["x-served-by"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(sides.len(), 1, "{sides:?}");
    // The legacy side speaks SOAP; translated, its answer has the modern shape.
    let mut shapes = std::collections::HashMap::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"] {
        let req = Request::get(demo.url("/api/orders/7"))
            .header("x-user", user)
            .body(empty())
            .unwrap();
        let a = send(&client(), req).await;
        assert_eq!(a.headers["content-type"], "application/json", "{}", a.text());
        let mut doc = a.json();
        let side = doc["served_by"].as_str().unwrap().to_string();
        doc.as_object_mut().unwrap().remove("served_by");
        // When the answer was made: on both sides, different each time.
        let generated = doc.as_object_mut().unwrap().remove("generated_at");
        assert!(generated.is_some_and(|g| g.as_str().is_some_and(|g| g.starts_with("20"))));
        shapes.insert(side, doc);
    }
    assert_eq!(shapes.len(), 2, "both sides served some of eight users");
    assert_eq!(shapes["legacy"], shapes["modern"]);
    // Half of the shadowed requests went to the serving side twice: `generated_at` is noise.
    let noise_url = format!("http://{}/admin/noise?route=orders", demo.admin);
    let learned = eventually(Duration::from_secs(10), || async {
        let noise = get(&noise_url).await.json();
        noise["fields"][0]["path"] == "generated_at"
            && noise["fields"].as_array().is_some_and(|f| f.len() == 1)
    })
    .await;
    assert!(learned, "{}", get(&noise_url).await.text());
    let drift = get(&format!("http://{}/admin/drift?route=orders", demo.admin))
        .await
        .json();
    let drifting: Vec<&str> = drift["fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    assert!(drifting.contains(&"served_by"), "{drift}");
    assert_eq!(get(&format!("http://{}/readyz", demo.admin)).await.status, 200);
    assert!(demo.interrupt().await, "the demo did not stop on SIGINT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request_and_none_is_lost_at_shutdown() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = basic_config(&up.url()).replace("access_log: false", "access_log: true");
    let log_path = dir.path().join("access.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut p = Process::run_with_stdout(&write_config(dir.path(), &yaml), &[], Stdio::from(log_file));
    let c = client();
    for i in 0..50 {
        let req =
            Request::get(format!("http://{}/item/{i}", p.addr)).header("x-request-id", format!("req-{i}"));
        assert_eq!(send(&c, req.body(empty()).unwrap()).await.status, 200);
    }
    let missing = format!("http://{}/..", p.addr);
    assert_eq!(get(&missing).await.status, 400);
    p.signal("TERM");
    let exit = tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(exit.is_some_and(|s| s.success()));

    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 51, "{text}");
    for (i, l) in lines.iter().take(50).enumerate() {
        assert_eq!(l["kind"], "access");
        assert_eq!(l["request_id"], format!("req-{i}"));
        assert_eq!(l["path"], format!("/item/{i}"));
        assert_eq!(l["route"], "all");
        assert_eq!(l["upstream"], "app");
        assert_eq!(l["status"], 200);
        assert_eq!(l["client"], "127.0.0.1");
    }
    assert_eq!(lines[50]["status"], 400);
    assert_eq!(lines[50]["error"], "invalid-path");
}

#[test]
fn schema_prints_the_committed_config_schema() {
    let out = Command::new(BIN).arg("schema").output().unwrap();
    assert!(out.status.success());
    let committed =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ficus.schema.json")).unwrap();
    assert!(
        out.stdout == committed,
        "`ficus schema` differs from config/ficus.schema.json; run `cargo run -- schema > config/ficus.schema.json`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_redacts_credential_query_parameters_and_never_logs_the_authorization() {
    let up = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = basic_config(&up.url()).replace("access_log: false", "access_log: true");
    let log_path = dir.path().join("access.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut p = Process::run_with_stdout(&write_config(dir.path(), &yaml), &[], Stdio::from(log_file));
    let req = Request::get(format!("http://{}/item?token=secret&x=1", p.addr))
        .header("authorization", "Bearer hunter2-bearer")
        .header("cookie", "session=cookie-value");
    assert_eq!(send(&client(), req.body(empty()).unwrap()).await.status, 200);
    p.signal("TERM");
    let exit = tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(exit.is_some_and(|s| s.success()));

    let text = std::fs::read_to_string(&log_path).unwrap();
    for secret in ["secret", "hunter2-bearer", "cookie-value"] {
        assert!(!text.contains(secret), "`{secret}` is in the access log: {text}");
    }
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["path"], "/item");
    assert_eq!(line["query"], "token=[REDACTED]&x=1");
}

fn demo_token(idp: SocketAddr, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["demo", "token", "--idp", &idp.to_string()])
        .args(args)
        .output()
        .unwrap()
}

/// Holds whichever of `ficus demo`'s default ports are free, so that nothing below can reach a
/// demo there: a real demo on the defaults, or these listeners, hold them all for the test.
fn occupy_the_demo_default_ports() -> Vec<std::net::TcpListener> {
    [
        "127.0.0.1:8080",
        "127.0.0.1:9901",
        "127.0.0.1:18001",
        "127.0.0.1:18002",
        "127.0.0.1:18003",
    ]
    .iter()
    .filter_map(|a| std::net::TcpListener::bind(a).ok())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_token_from_the_cli_opens_the_protected_route() {
    let _held = occupy_the_demo_default_ports();
    // A demo on the defaults cannot start now, and says which address and flag.
    let mut blocked = Command::new(BIN)
        .arg("demo")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while blocked.try_wait().unwrap().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = blocked.kill();
    let blocked = blocked.wait_with_output().unwrap();
    assert!(!blocked.status.success());
    let why = String::from_utf8_lossy(&blocked.stderr);
    assert!(why.contains("127.0.0.1:18003") && why.contains("--idp"), "{why}");

    // Without a demo on that address there is nobody to sign: a clear error, not a token.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let none = demo_token(nobody, &["--sub", "alice"]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("ficus demo"));

    let mut demo = Demo::start();
    let out = demo_token(demo.idp, &["--sub", "alice", "--scope", "orders:read"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");

    let me = demo.url("/api/me");
    let call = |token: Option<String>| {
        let me = me.clone();
        async move {
            let mut req = Request::get(me);
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            send(&client(), req.body(empty()).unwrap()).await
        }
    };
    call(None).await.assert_problem(401, "missing-token");
    let ok = call(Some(token)).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["user"], "alice");
    // The route needs orders:read.
    let out = demo_token(demo.idp, &["--sub", "bob", "--scope", "profile"]);
    let narrow = String::from_utf8(out.stdout).unwrap().trim().to_string();
    call(Some(narrow)).await.assert_problem(403, "insufficient-scope");
    call(Some("not-a-token".into()))
        .await
        .assert_problem(401, "invalid-token");
    demo.interrupt().await;
}
