use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ficus::config::compile::standalone;
use ficus::config::ConfigSource;
use ficus::gateway::Gateway;

// glibc's malloc showed up as a tenth of the per-request CPU in profiles of the plain route;
// mimalloc's thread-local free lists make the many small per-request allocations cheap.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ficus",
    version,
    about = "An HTTP gateway for strangler-fig migrations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given config.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config: exit 0 when valid, else print `file:line: key.path: reason` lines.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the config file's JSON Schema (the one committed as config/ficus.schema.json), for
    /// editors and CI validators.
    Schema,
    /// Run the embedded demo: ficus on 127.0.0.1:8080 in front of two in-process backends and a
    /// demo identity provider.
    ///
    /// Every part's address can be moved (port 0 picks a free one; the banner shows it), so a
    /// demo can run next to another one, or next to whatever else holds 8080:
    ///   ficus demo --listen 127.0.0.1:8090 --admin 127.0.0.1:9911 --idp 127.0.0.1:18013
    ///   ficus demo token --idp 127.0.0.1:18013 --sub alice --scope orders:read
    #[command(verbatim_doc_comment)]
    Demo {
        #[command(flatten)]
        addrs: DemoAddrs,
        #[command(subcommand)]
        action: Option<DemoAction>,
    },
    /// Run one request or answer through a route's transform, offline, and print what the other
    /// side receives.
    ///
    /// The body is read from stdin (none when stdin is a terminal). The translated body goes to
    /// stdout, byte for byte; the rest goes to stderr: for a request, the request line the
    /// backend gets (`POST /OrderService.asmx`) and its headers; for an answer, `status: N` and
    /// the headers the client gets. A request goes through the same code as live traffic
    /// (method override, path and query rewrite, body built from path captures, header ops,
    /// body ops). Headers ficus adds to every upstream request (X-Forwarded-*, X-Request-Id,
    /// traceparent, identity headers) are not shown.
    ///
    /// Example (the demo's GET, which the legacy side gets as a SOAP GetOrder POST):
    ///   ficus translate -c config/demo.yaml --route orders --direction request --path /api/orders/7
    #[command(verbatim_doc_comment)]
    Translate {
        /// The config file (compiled as `ficus check` compiles it).
        #[arg(long, short)]
        config: PathBuf,
        /// The route's `name`; its transform for `--side` is used.
        #[arg(long)]
        route: String,
        /// `request`: client -> backend; `response`: backend -> client.
        #[arg(long, value_enum)]
        direction: DirectionArg,
        /// Whose dialect: the route's legacy or modern side (a migration route may translate
        /// for either).
        #[arg(long, value_enum, default_value = "legacy")]
        side: SideArg,
        /// The input body's media type (default for a body: the first `content_types` entry;
        /// a request without a body has none).
        #[arg(long)]
        content_type: Option<String>,
        /// The backend's status, for the response `status` and `errors` rules.
        #[arg(long, default_value_t = 200)]
        status: u16,
        /// The request's path and query as the client sends it (default `/`). It is normalised
        /// as ficus normalises it, and the route's `path_template` captures come from that.
        /// Request direction.
        #[arg(long)]
        path: Option<String>,
        /// The request's method (default: GET without a body, POST with one). Request direction.
        #[arg(long)]
        method: Option<String>,
        /// A header of the input, as `Name: value`; repeat for more.
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
    },
    /// Print a route's contract report (the JSON shape each side answers with, and the
    /// differences between legacy and modern) from a running ficus's admin API, for CI.
    ///
    /// Exit status: 0 when no difference is breaking, 1 when some are, 2 when the report cannot
    /// be fetched (unknown route, admin API unreachable).
    ///   ficus contract --admin http://127.0.0.1:9901 --route orders
    #[command(verbatim_doc_comment)]
    Contract {
        /// The admin API's base URL (plain HTTP).
        #[arg(long, value_name = "URL")]
        admin: String,
        /// The route's `name`.
        #[arg(long)]
        route: String,
        /// Print the raw report (JSON) instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Generate config from a legacy service's description, printed to stdout.
    Import {
        #[command(subcommand)]
        what: ImportWhat,
    },
}

#[derive(Subcommand)]
enum ImportWhat {
    /// One route and one transform per operation of a WSDL 1.1 SOAP service (SOAP 1.1 or 1.2,
    /// document/literal wrapped), as a complete config that `ficus check` accepts. What cannot
    /// be mapped is said in a comment above its route. Local `xs:import`/`xs:include` files are
    /// read (inside the WSDL's directory only); URLs are never fetched.
    ///
    /// Example (the demo's legacy service):
    ///   curl -s 'http://127.0.0.1:18001/OrderService.asmx?wsdl' > orders.wsdl
    ///   ficus import wsdl orders.wsdl --prefix /api/v1 > orders.yaml && ficus check -c orders.yaml
    #[command(verbatim_doc_comment)]
    Wsdl {
        /// The WSDL file.
        file: PathBuf,
        /// Only this operation (repeat for more); all of the binding's by default.
        #[arg(long = "operation", value_name = "NAME")]
        operations: Vec<String>,
        /// Each route's path is PREFIX/OperationName.
        #[arg(long, default_value = "/api")]
        prefix: String,
        /// The `upstreams` name the routes go to.
        #[arg(long, default_value = "legacy")]
        upstream: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DirectionArg {
    Request,
    Response,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SideArg {
    Legacy,
    Modern,
}

#[derive(clap::Args)]
struct DemoAddrs {
    /// The public listener clients call (config/demo.yaml's `listeners[0].bind`).
    #[arg(long, value_name = "IP:PORT", default_value = ficus::demo::LISTEN_ADDR)]
    listen: std::net::SocketAddr,
    /// The admin listener: /metrics, /readyz, /admin/* (`admin.bind`).
    #[arg(long, value_name = "IP:PORT", default_value = ficus::demo::ADMIN_ADDR)]
    admin: std::net::SocketAddr,
    /// The in-process legacy backend (the `legacy` upstream's endpoint).
    #[arg(long, value_name = "IP:PORT", default_value = ficus::demo::LEGACY_ADDR)]
    legacy: std::net::SocketAddr,
    /// The in-process modern backend (the `modern` upstream's endpoint).
    #[arg(long, value_name = "IP:PORT", default_value = ficus::demo::MODERN_ADDR)]
    modern: std::net::SocketAddr,
    /// The demo identity provider: JWKS, issuer `http://IP:PORT/`, and what `demo token` asks.
    #[arg(long, value_name = "IP:PORT", default_value = ficus::demo::IDP_ADDR)]
    idp: std::net::SocketAddr,
}

#[derive(Subcommand)]
enum DemoAction {
    /// Print a token the running demo accepts (it signs it; the key never leaves its memory).
    Token {
        /// The demo identity provider to ask: the `--idp` the demo was started with.
        #[arg(long, value_name = "IP:PORT", default_value = ficus::demo::IDP_ADDR)]
        idp: std::net::SocketAddr,
        #[arg(long, default_value = "alice")]
        sub: String,
        /// Space-separated scopes.
        #[arg(long, default_value = "")]
        scope: String,
        /// Lifetime (at most 24h).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(ConfigSource::File(config)),
        Command::Run { config } => serve(ConfigSource::File(config), None),
        Command::Schema => {
            print!("{}", ficus::config::schema::generate());
            ExitCode::SUCCESS
        }
        Command::Demo {
            addrs: a,
            action: None,
        } => serve(
            ficus::demo::source(),
            Some(ficus::demo::Addrs {
                listen: a.listen,
                admin: a.admin,
                legacy: a.legacy,
                modern: a.modern,
                idp: a.idp,
            }),
        ),
        Command::Demo {
            action: Some(DemoAction::Token { idp, sub, scope, ttl }),
            ..
        } => demo_token(idp, &sub, &scope, ttl),
        Command::Import {
            what:
                ImportWhat::Wsdl {
                    file,
                    operations,
                    prefix,
                    upstream,
                },
        } => import_wsdl(
            &file,
            ficus::import::wsdl::Options {
                operations,
                prefix,
                upstream,
            },
        ),
        Command::Translate {
            config,
            route,
            direction,
            side,
            content_type,
            status,
            path,
            method,
            headers,
        } => translate(
            &config,
            TranslateArgs {
                route: &route,
                direction,
                side,
                content_type: content_type.as_deref(),
                status,
                path: path.as_deref(),
                method: method.as_deref(),
                headers: &headers,
            },
        ),
        Command::Contract { admin, route, json } => contract(&admin, &route, json),
    }
}

fn contract(admin: &str, route: &str, raw: bool) -> ExitCode {
    use ficus::pipeline::contract::cli;
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ficus: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(cli::fetch(admin, route)) {
        Ok(report) => {
            if raw {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print!("{}", cli::summary(&report));
            }
            if cli::breaking(&report) > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("ficus contract: {e}");
            ExitCode::from(2)
        }
    }
}

fn demo_token(idp: std::net::SocketAddr, sub: &str, scope: &str, ttl: std::time::Duration) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ficus: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(ficus::demo::request_token(idp, sub, scope, ttl)) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ficus demo token: {e}");
            ExitCode::FAILURE
        }
    }
}

fn import_wsdl(file: &std::path::Path, opts: ficus::import::wsdl::Options) -> ExitCode {
    if !opts.prefix.starts_with('/') {
        eprintln!(
            "ficus import wsdl: --prefix `{}` must start with `/`",
            opts.prefix
        );
        return ExitCode::FAILURE;
    }
    match ficus::import::wsdl::import_file(file, &opts) {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ficus import wsdl: {e}");
            ExitCode::FAILURE
        }
    }
}

struct TranslateArgs<'a> {
    route: &'a str,
    direction: DirectionArg,
    side: SideArg,
    content_type: Option<&'a str>,
    status: u16,
    path: Option<&'a str>,
    method: Option<&'a str>,
    headers: &'a [String],
}

fn translate(config: &std::path::Path, a: TranslateArgs<'_>) -> ExitCode {
    use ficus::translate::{offline, Direction};
    use std::io::{IsTerminal as _, Read as _, Write as _};
    let mut body = Vec::new();
    let stdin = std::io::stdin();
    // Nothing piped in: a request without a body (the demo's GET), not a wait for typing.
    if !stdin.is_terminal() {
        if let Err(e) = stdin.lock().read_to_end(&mut body) {
            eprintln!("reading stdin: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut headers = Vec::new();
    for h in a.headers {
        match h.split_once(':') {
            Some((k, v)) => headers.push((k, v)),
            None => {
                eprintln!("error: `--header {h}`: write `Name: value`");
                return ExitCode::FAILURE;
            }
        }
    }
    let input = offline::Input {
        route: a.route,
        direction: match a.direction {
            DirectionArg::Request => Direction::Request,
            DirectionArg::Response => Direction::Response,
        },
        side: match a.side {
            SideArg::Legacy => ficus::pipeline::context::Side::Legacy,
            SideArg::Modern => ficus::pipeline::context::Side::Modern,
        },
        content_type: a.content_type,
        status: a.status,
        path: a.path,
        method: a.method,
        headers: &headers,
        body: &body,
    };
    match offline::run(config, &input) {
        Ok(out) => {
            // Metadata on stderr so that stdout is exactly the translated body.
            if let (Some(m), Some(p)) = (&out.method, &out.path) {
                eprintln!("{m} {p}");
            }
            if let Some(s) = out.status {
                eprintln!("status: {s}");
            }
            for (k, v) in &out.headers {
                eprintln!("{k}: {}", String::from_utf8_lossy(v.as_bytes()));
            }
            let mut stdout = std::io::stdout();
            if stdout.write_all(&out.body).and_then(|()| stdout.flush()).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(source: ConfigSource) -> ExitCode {
    let result = source
        .read()
        .and_then(|text| standalone(&text).map(|snap| snap.warnings));
    match result {
        Ok(warnings) => {
            // Warnings do not fail the check: the config is valid, just probably not what was meant.
            for w in &warnings {
                println!("{}:{}: {}: warning: {}", w.file, w.line, w.path, w.reason);
            }
            println!("{}: ok", source.name());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for p in &errors.0 {
                println!("{p}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `demo`: the demo's addresses; its backends and IdP start first and the embedded config is
/// pointed at them.
fn serve(mut source: ConfigSource, demo: Option<ficus::demo::Addrs>) -> ExitCode {
    // The runtime and log settings are needed before the gateway starts; a config that does not
    // parse is reported properly by `Gateway::start` below.
    let parsed = source.read().ok().and_then(|t| t.parse().ok());
    let level = parsed
        .as_ref()
        .map(|c| c.log.level.clone())
        .unwrap_or_else(|| "info".into());
    let workers = parsed.as_ref().map(|c| c.runtime.worker_threads).unwrap_or(0);
    ficus::telemetry::init_logging(&level);

    // One worker: the current-thread scheduler does the same work without cross-thread wakeups
    // and work-stealing bookkeeping, which is measurably cheaper per request (README, Performance).
    let mut rt = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if workers > 0 {
            b.worker_threads(workers);
        }
        b
    };
    rt.enable_all();
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ficus: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let mut demo_bound = None;
        if let Some(addrs) = demo {
            match ficus::demo::start(&addrs).await {
                Ok((src, bound)) => {
                    source = src;
                    demo_bound = Some(bound);
                }
                Err(e) => {
                    eprintln!("ficus demo: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let gateway = match Gateway::start(source).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("ficus: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(bound) = demo_bound {
            if let Some(public) = gateway.addr("public") {
                eprintln!("{}", ficus::demo::banner(public, gateway.admin_addr(), &bound));
            }
        }
        let handle = gateway.shutdown_handle();
        tokio::spawn(signals(handle));
        gateway.wait().await;
        ExitCode::SUCCESS
    })
}

#[cfg(unix)]
async fn signals(handle: ficus::gateway::ShutdownHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let _ = ficus::gateway::reload::reload(handle.shared(), "SIGHUP").await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    handle.trigger();
}

#[cfg(not(unix))]
async fn signals(handle: ficus::gateway::ShutdownHandle) {
    let _ = tokio::signal::ctrl_c().await;
    handle.trigger();
}
