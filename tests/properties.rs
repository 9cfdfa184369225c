//! Property tests for every parser that sees request (or backend) bytes: no input may panic
//! (SECURITY.md: a panic ends the connection or the h2 stream). Each property feeds arbitrary
//! bytes and strings, plus generators shaped like the format, so that the parsers get past their
//! first check; where the format allows it, a stronger property is checked too.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use ipnet::IpNet;
use proptest::prelude::*;
use serde_json::Value;

use ficus::config::compile::{standalone, Snapshot};
use ficus::config::transform::TransformConfig;
use ficus::config::ConfigSource;
use ficus::identity::jwt::Claims;
use ficus::pipeline::context;
use ficus::pipeline::diff::{diff_bodies, ignore_rule, DiffRules};
use ficus::pipeline::key::KeyFacts;
use ficus::pipeline::normalize::normalize_path;
use ficus::pipeline::route::{self, RequestView};
use ficus::translate::charset::to_utf8;
use ficus::translate::dates;
use ficus::translate::{Direction, DirectionPlan, Transform};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- generators

/// Strings made of pieces that mean something to the parser under test, so that random
/// combinations reach its deeper branches, mixed with arbitrary characters.
fn soup(pieces: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(pieces).prop_map(str::to_string),
            1 => any::<char>().prop_map(String::from),
        ],
        0..max,
    )
    .prop_map(|v| v.concat())
}

fn bytes_soup(pieces: &'static [&'static [u8]], max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(pieces).prop_map(<[u8]>::to_vec),
            1 => any::<u8>().prop_map(|b| vec![b]),
        ],
        0..max,
    )
    .prop_map(|v| v.concat())
}

const PATH_PIECES: &[&str] = &[
    "/", "/", "/", "//", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%00", "%7e", "%41", "%25", "%c3%a9",
    "%", "%z", "a", "b", "api", "é", "~", ";", ";x", "..;", "?", "#", "\\", "\u{7f}", " ",
];

fn ascii_path() -> impl Strategy<Value = String> {
    path().prop_map(|p| p.chars().filter(char::is_ascii).collect())
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        soup(PATH_PIECES, 16).prop_map(|s| format!("/{s}")),
        soup(PATH_PIECES, 16),
        any::<String>(),
    ]
}

const XML_PIECES: &[&[u8]] = &[
    b"<?xml version=\"1.0\"",
    b" encoding=",
    b"encoding",
    b"\"ISO-8859-1\"",
    b"'windows-1252'",
    b"\"UTF-16\"",
    b"\"klingon\"",
    b"\"",
    b"'",
    b"?>",
    b"<a>",
    b"</a>",
    b"<b x=\"1\">",
    b"</b>",
    b"<a/>",
    b"<n:c xmlns:n=\"urn:x\">",
    b"</n:c>",
    b"<![CDATA[",
    b"]]>",
    b"<!--",
    b"-->",
    b"&amp;",
    b"&#233;",
    b"&#x0;",
    b"&bogus;",
    b"text",
    b" ",
    b"\xe9",
    b"\xc3\xa9",
    b"\x80",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\">",
    b"<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\">",
    b"</s:Envelope>",
    b"<s:Body>",
    b"</s:Body>",
    b"<s:Fault>",
    b"</s:Fault>",
    b"<faultcode>s:Client.NotFound</faultcode>",
    b"<s:Code><s:Value>s:Sender</s:Value></s:Code>",
    b"<Order>",
    b"</Order>",
    b"<Lines><Line><SKU>A</SKU></Line></Lines>",
];

fn xml() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes_soup(XML_PIECES, 24),
        bytes_soup(XML_PIECES, 24).prop_map(|b| [b"<?xml ".as_slice(), &b].concat()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(
            &[
                "a",
                "id",
                "lines",
                "Lines",
                "Line",
                "DATA",
                "RESULT",
                "MSG",
                "CODE",
                "CUST_NO",
                "STATUS",
                "TOTAL_CENTS",
                "CREATED",
                "BIRTH_DT",
                "TAGS",
                "VIP",
                "BALANCE",
                "customer_id",
                "delivery_date",
                "sku",
                "quantity",
                "unit_price",
                "name",
                "newsletter",
                "@id",
                "#text",
                "a.b",
                "a[0]",
                "x[",
                "]",
                "",
            ][..]
        )
        .prop_map(str::to_string),
        any::<String>(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(
            &[
                "ERR",
                "OK",
                "N",
                "S",
                "X",
                "A",
                "2024-01-31",
                "31/01/2024",
                "20240131120000",
                "1999",
                "-5",
                "0.5",
                "true",
                "NOT_FOUND",
                "a,b,,c",
                "",
            ][..]
        )
        .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FORM_PIECES: &[&str] = &[
    "=", "&", "+", "%", "%2", "%41", "%e9", "%C3%A9", "a", "status", "OK", "DUP", "ref", "12", "é", ";",
];

/// A body of any of the shapes the translators read.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        xml(),
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        soup(FORM_PIECES, 24).prop_map(String::into_bytes),
    ]
}

/// Bytes a `HeaderValue` accepts: visible ASCII, obs-text, space and tab.
fn header_value(pieces: &'static [&'static str]) -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        soup(pieces, 12).prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..48),
    ]
    .prop_map(|b| {
        let b: Vec<u8> = b
            .into_iter()
            .filter(|c| *c == b'\t' || (*c >= 0x20 && *c != 0x7f))
            .collect();
        HeaderValue::from_bytes(&b).unwrap()
    })
}

const HEADER_PIECES: &[&str] = &[
    "a=b",
    "; ",
    ";",
    "=",
    ",",
    " ",
    "session",
    "canary=yes",
    "yes",
    "1",
    "upgrade",
    "close",
    "host",
    "x-tenant",
    "keep-alive",
    "proxy-authorization",
    "10.0.0.1",
    "192.0.2.7",
    "::1",
    "[::1]",
    "2001:db8::1",
    "unknown",
    "é",
    "\"q\"",
    "for=1.2.3.4",
];

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
        Just(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
    ]
}

// ---------------------------------------------------------------- compiled configs

fn compiled(source: ConfigSource) -> Snapshot {
    standalone(&source.read().unwrap()).unwrap_or_else(|e| panic!("{e}"))
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Routes with every kind of matcher, rate-limit key and sticky key.
const ROUTING: &str = "
log: { level: error, access_log: false }
listeners: [{ name: main, bind: '127.0.0.1:0' }]
admin: { bind: '127.0.0.1:0' }
reload: { watch: false }
upstreams:
  a: { endpoints: ['http://127.0.0.1:9'] }
  b: { endpoints: ['http://127.0.0.1:9'] }
rate_limits:
  policies:
    by-header: { key: 'header:x-tenant', rate: 1000/s, missing_key: skip }
    by-ip-and-route: { key: [client_ip, route], rate: 1000/s }
    by-claim: { key: [jwt.sub, 'header:cookie'], rate: 1000/s, exempt: { cidrs: [10.0.0.0/8], claims: [{ name: role, equals: ops }] } }
    sliding: { key: 'header:x-forwarded-for', rate: 1000/m, algorithm: sliding_window }
routes:
  - name: hosts
    match: { hosts: ['example.com', '*.example.com'], path_prefix: /h }
    upstream: a
  - name: conditions
    match:
      path_template: '/orders/{id}/{*rest}'
      headers: [{ name: x-api-version, regex: '^[0-9]+$' }]
      query: [{ name: debug, present: false }]
      cookies: [{ name: canary, equals: 'yes' }]
    upstream: a
  - name: regex
    match: { path_regex: '/v[0-9]+/.*', methods: [GET, POST] }
    upstream: a
    rate_limit: [by-header, by-ip-and-route, by-claim, sliding]
  - name: sticky-cookie
    match: { path_prefix: /sc }
    migration: { legacy: { upstream: a }, modern: { upstream: b }, modern_percent: 50, sticky: 'cookie:session', cohorts: ['beta'] }
  - name: sticky-query
    match: { path_prefix: /sq }
    migration: { legacy: { upstream: a }, modern: { upstream: b }, modern_percent: 50, sticky: 'query:user' }
  - name: sticky-header
    match: { path_prefix: /sh }
    migration: { legacy: { upstream: a }, modern: { upstream: b }, modern_percent: 50, sticky: 'header:x-user-id' }
  - name: rest
    upstream: a
";

fn routing() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| {
        let _rt = runtime().enter();
        compiled(ConfigSource::Embedded {
            name: "properties-routing.yaml".into(),
            text: ROUTING,
            base_dir: PathBuf::from("."),
        })
    })
}

/// Transforms beyond the golden fixtures: every other op and option, both SOAP versions.
const EXTRA_TRANSFORMS: &str = "
xml_full:
  request:
    content_types: [text/xml, application/xml]
    ops:
      - xml_to_json: { array_paths: [a.b, Order.Lines.Line], keep_prefixes: true }
      - json_to_xml: { root: r, namespaces: { n: 'urn:n' }, order: [b, a] }
  response:
    content_types: ['*/*']
    status:
      - when: { body_contains: Fault, status: 5xx }
        status: 502
      - when: { json_path: a.b, equals: 1 }
        status: 409
    errors: { statuses: ['4xx', '5xx'], detail: a, code: b }
    ops:
      - xml_to_json: {}
      - copy: { from: a, to: c }
      - wrap: { key: data }
soap12:
  request:
    content_types: [application/json]
    ops:
      - soap_wrap: { version: '1.2', action: 'urn:x', body_element: Op, order: [b, a] }
  response:
    content_types: [application/soap+xml, text/xml]
    ops:
      - soap_unwrap: { keep_operation: true, array_paths: [Op.a] }
json_full:
  request:
    content_types: [application/json, application/x-www-form-urlencoded]
    ops:
      - convert: { path: a, to: number }
      - convert: { path: b, to: bool }
      - convert: { path: id, to: string }
      - join: { path: TAGS, separator: ',' }
      - split: { path: name, separator: ' ' }
      - money: { path: TOTAL_CENTS, to: decimal }
      - money: { path: unit_price, to: cents }
      - date: { path: CREATED, from: epoch_millis, to: 'yyyy-MM-dd HH:mm:ss.SSS', tz: Europe/Paris }
      - date: { path: delivery_date, from: rfc3339, to: epoch_seconds }
      - default: { path: x, value: 1 }
      - each: { path: lines, ops: [{ rename: { path: sku, to: SKU } }, { delete: { path: quantity } }] }
      - move: { from: 'lines.*.SKU', to: 'lines.*.code' }
      - json_to_form: {}
";

/// Every request and response plan of the golden fixture config and of [`EXTRA_TRANSFORMS`].
fn plans() -> &'static [(String, Direction, Arc<Transform>)] {
    static PLANS: OnceLock<Vec<(String, Direction, Arc<Transform>)>> = OnceLock::new();
    PLANS.get_or_init(|| {
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translate/ficus.yaml");
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
        let mut all: BTreeMap<String, TransformConfig> =
            serde_yaml_ng::from_value(doc["transforms"].clone()).unwrap();
        let extra: BTreeMap<String, TransformConfig> = serde_yaml_ng::from_str(EXTRA_TRANSFORMS).unwrap();
        all.extend(extra);
        let metrics = ficus::telemetry::Metrics::new();
        let mut out = Vec::new();
        for (name, cfg) in &all {
            let t =
                Arc::new(Transform::compile(name, cfg, &metrics).unwrap_or_else(|e| panic!("{name}: {e:?}")));
            for d in [Direction::Request, Direction::Response] {
                if t.plan(d).is_some() {
                    out.push((name.clone(), d, t.clone()));
                }
            }
        }
        assert!(out.len() >= 10, "{} plans", out.len());
        out
    })
}

fn plan(i: usize, d: Direction) -> (&'static str, &'static DirectionPlan) {
    let (name, _, t) = plans().iter().filter(|(_, dir, _)| *dir == d).nth(i).unwrap();
    (name, t.plan(d).unwrap())
}

fn plan_count(d: Direction) -> usize {
    plans().iter().filter(|(_, dir, _)| *dir == d).count()
}

// ---------------------------------------------------------------- path normalisation

proptest! {
    #![proptest_config(config())]

    #[test]
    fn normalize_never_panics(p in path()) {
        let _ = normalize_path(&p, false);
        let _ = normalize_path(&p, true);
    }

    /// With `path_params: keep`, the normal form is stable too, and no segment is a dot segment
    /// once its `;` parameters are set aside (what a servlet container would resolve).
    #[test]
    fn kept_path_parameters_never_hide_a_dot_segment(p in path()) {
        if let Ok(n) = normalize_path(&p, true) {
            prop_assert!(!n.split('/').any(|s| {
                let bare = s.split(';').next().unwrap_or("");
                bare == "." || bare == ".."
            }), "{p:?} -> {n:?}");
            let again = normalize_path(&n, true);
            prop_assert_eq!(again.as_deref(), Ok(&*n), "{:?}", p);
        }
    }

    #[test]
    fn normalized_paths_are_normal_and_normalizing_again_changes_nothing(p in ascii_path()) {
        if let Ok(n) = normalize_path(&p, false) {
            prop_assert!(n.starts_with('/'), "{p:?} -> {n:?}");
            prop_assert!(!n.contains("//"), "{p:?} -> {n:?}");
            prop_assert!(!n.split('/').any(|s| s == "." || s == ".."), "{p:?} -> {n:?}");
            prop_assert!(!n.to_ascii_lowercase().contains("%2e"), "{p:?} -> {n:?}");
            let again = normalize_path(&n, false);
            prop_assert_eq!(again.as_deref(), Ok(&*n), "{:?}", p);
        }
    }

    /// Issue 12 item 17: a rewritten path keeps its non-ASCII characters, and so normalising
    /// is idempotent on any input. Failed before the fix: `/é/./x` became `/Ã©/x`, and `/%25¡`
    /// became `/%25Â¡`, then `/%25Ã\u{82}Â¡`.
    #[test]
    fn normalizing_keeps_non_ascii_characters(seg in "[a-zé€中]{1,6}", p in path()) {
        let dotted = format!("/{seg}/./x");
        let n = normalize_path(&dotted, false).unwrap();
        prop_assert_eq!(n, Cow::<str>::Owned(format!("/{seg}/x")));
        if let Ok(n) = normalize_path(&p, false) {
            let again = normalize_path(&n, false);
            prop_assert_eq!(again.as_deref(), Ok(&*n), "{:?}", p);
        }
    }
}

// ---------------------------------------------------------------- charset sniffing

const CHARSETS: &[&str] = &[
    "",
    "; charset=utf-8",
    "; charset=UTF-8",
    "; charset=iso-8859-1",
    "; charset=\"windows-1252\"",
    "; charset=latin-1",
    "; charset=utf-16",
    "; charset=utf-16be",
    "; charset=shift_jis",
    "; charset=gb18030",
    "; charset=klingon",
    "; charset=iso-2022-kr",
    "; charset=",
    "; charset",
    ";charset=é",
    "; x=1; charset=koi8-r",
];

fn content_type() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (prop::sample::select(&["text/xml", "application/json", "text/plain", ""][..]), prop::sample::select(CHARSETS))
            .prop_map(|(t, c)| format!("{t}{c}")),
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn charset_decoding_never_panics(b in prop_oneof![xml(), prop::collection::vec(any::<u8>(), 0..128)], ct in content_type()) {
        let _ = to_utf8(&b, &ct);
    }

    #[test]
    fn utf8_text_without_a_declaration_or_bom_is_passed_through_borrowed(s in any::<String>()) {
        prop_assume!(!s.starts_with('\u{feff}') && !s.starts_with("<?xml"));
        prop_assert!(matches!(to_utf8(s.as_bytes(), "text/plain"), Ok(Cow::Borrowed(t)) if t == s));
    }

    #[test]
    fn windows_1252_decodes_every_byte_to_one_character(b in prop::collection::vec(any::<u8>(), 0..256)) {
        prop_assume!(!b.starts_with(b"<?xml") && !b.starts_with(b"\xef\xbb\xbf") && !b.starts_with(b"\xff\xfe") && !b.starts_with(b"\xfe\xff"));
        let t = to_utf8(&b, "text/plain; charset=windows-1252").unwrap();
        prop_assert_eq!(t.chars().count(), b.len());
    }

    /// Once decoded, the text is UTF-8 and says so: decoding it again as UTF-8 changes nothing.
    #[test]
    fn decoded_text_is_stable_under_a_second_decode(b in xml(), ct in content_type()) {
        if let Ok(t) = to_utf8(&b, &ct) {
            prop_assume!(!t.starts_with('\u{feff}'));
            let again = to_utf8(t.as_bytes(), "text/xml; charset=utf-8").unwrap();
            prop_assert_eq!(&*again, &*t);
        }
    }
}

// ---------------------------------------------------------------- translation

proptest! {
    #![proptest_config(config())]

    /// Every plan, both ways, on any body: a translation or a clean error, never a panic; a
    /// translation is framed for its new body, and JSON it claims is JSON.
    #[test]
    fn translation_plans_never_panic_and_frame_what_they_produce(
        i in any::<prop::sample::Index>(),
        response in any::<bool>(),
        b in body(),
        (own, which, charset, other) in (any::<bool>(), any::<prop::sample::Index>(), prop::sample::select(CHARSETS), content_type()),
        status in 100u16..600,
    ) {
        let d = if response { Direction::Response } else { Direction::Request };
        let (name, plan) = plan(i.index(plan_count(d)), d);
        // Mostly a media type the plan translates, with any charset; else anything.
        let ct = match plan.content_types.len() {
            n if own && n > 0 => {
                let t = &plan.content_types[which.index(n)];
                format!("{}{charset}", if t == "*/*" { "text/xml" } else { t })
            }
            _ => other,
        };
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&ct) {
            headers.insert(CONTENT_TYPE, v);
        }
        plan.apply_headers(&mut headers);
        // As the pipeline does: other media types and empty bodies stream through untouched.
        if !plan.wants_body(&headers) || b.is_empty() {
            return Ok(());
        }
        let status = (d == Direction::Response).then(|| StatusCode::from_u16(status).unwrap());
        if let Ok(out) = plan.translate(status, &mut headers, &b) {
            prop_assert_eq!(headers[CONTENT_LENGTH].to_str().unwrap(), out.body.len().to_string(), "{}", name);
            let out_ct = headers[CONTENT_TYPE].to_str().unwrap_or("");
            let base = |t: &str| t.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            // A body whose type ficus changed to JSON is JSON (one it only re-encoded is the
            // backend's own, whatever it holds).
            if out_ct.contains("json") && base(out_ct) != base(&ct) {
                prop_assert!(serde_json::from_slice::<Value>(&out.body).is_ok(), "{name}: {out_ct}: {:?}", out.body);
            }
        }
    }

    #[test]
    fn json_documents_through_every_plan_never_panic(i in any::<prop::sample::Index>(), response in any::<bool>(), v in json_value()) {
        let d = if response { Direction::Response } else { Direction::Request };
        let (_, plan) = plan(i.index(plan_count(d)), d);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let status = (d == Direction::Response).then_some(StatusCode::OK);
        let _ = plan.translate(status, &mut headers, &serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn uri_rewrites_never_panic(
        i in any::<prop::sample::Index>(),
        p in path(),
        q in prop_oneof![Just(None), soup(FORM_PIECES, 16).prop_map(Some)],
        caps in prop::collection::vec((prop::sample::select(&["id", "rest", "x"][..]).prop_map(str::to_string), any::<String>()), 0..3),
    ) {
        let (_, plan) = plan(i.index(plan_count(Direction::Request)), Direction::Request);
        let _ = plan.rewrite_uri(&p, q.as_deref(), &caps);
        let _ = plan.synthesised_body(&caps);
    }
}

// ---------------------------------------------------------------- dates in bodies

const DATE_FORMATS: &[&str] = &[
    "rfc3339",
    "epoch_seconds",
    "epoch_millis",
    "dd/MM/yyyy",
    "yyyyMMddHHmmss",
    "yyyy-MM-dd HH:mm:ss.SSS",
    "'T'yyyy'é'MMdd",
];
const DATE_PIECES: &[&str] = &[
    "0", "1", "9", "2024", "12", "31", "29", "02", "-", ":", "/", "T", "Z", ".", "+01:00", "-23:59", " ",
    "é", "T",
];

fn date_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        (-400_000_000_000_000i64..400_000_000_000_000).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<i64>().prop_map(|n| Value::from(n.to_string())),
        strict_soup(DATE_PIECES, 0..12).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any value a backend puts where a date is expected, read in any format and written in
    /// any other, in a fixed or a named zone: a date or an error.
    #[test]
    fn date_conversions_never_panic(
        v in date_value(),
        from in prop::sample::select(DATE_FORMATS),
        to in prop::sample::select(DATE_FORMATS),
        zone in prop::sample::select(&["UTC", "+14:00", "-12:00", "Europe/Paris", "America/St_Johns"][..]),
    ) {
        let zone = dates::parse_zone(zone).unwrap();
        if let Ok(ms) = dates::DateFormat::parse(from).unwrap().read(&v, &zone) {
            let written = dates::DateFormat::parse(to).unwrap().write(ms, &zone);
            // Formats that keep milliseconds and the offset read back to the same instant.
            if to == "rfc3339" || to == "epoch_millis" {
                let back = dates::DateFormat::parse(to).unwrap().read(&written, &zone);
                prop_assert_eq!(back, Ok(ms), "{} {} -> {} {}", v, from, written, to);
            }
        }
    }
}

// ---------------------------------------------------------------- shadow diffs

const DIFF_PATTERNS: &[&str] = &[
    "$", ".", "[*]", "[", "]", "a", "b", "x[", "/", "@", "#text", "*", "0",
];

/// `ignore` patterns: mostly shaped like the paths diffs produce, in the old spelling (`$.a[*].b`,
/// `/a/@x`) and the field-path one (`a.*.b`, `a.@x`).
fn diff_pattern() -> impl Strategy<Value = String> {
    let step = prop::sample::select(
        &[
            ".a", ".b", ".x", ".x[", ".a[0]", "[*]", "[0]", "[", "]", "/a", "/@x", "/#text", ".",
        ][..],
    );
    prop_oneof![
        3 => (prop::sample::select(&["$", ""][..]), prop::collection::vec(step, 0..5)).prop_map(|(root, s)| format!("{root}{}", s.concat())),
        1 => soup(DIFF_PATTERNS, 8),
        // The field-path syntax (`items.*.id`, `Order.Item.1.@x`).
        2 => prop::collection::vec(prop::sample::select(&["a", "b", "x", "x[", "*", "0", "1", "@x", "#text"][..]), 0..5).prop_map(|s| s.join(".")),
    ]
}

fn diff_rules() -> impl Strategy<Value = DiffRules> {
    (
        prop::collection::vec(diff_pattern(), 0..4),
        any::<bool>(),
        prop_oneof![Just(0.0), 0.0f64..10.0],
        any::<bool>(),
    )
        .prop_map(
            |(ignore, ignore_array_order, numeric_tolerance, redact_values)| DiffRules {
                // Patterns that do not parse are config errors, never rules.
                ignore: ignore
                    .iter()
                    .filter_map(|p| ignore_rule(p).ok())
                    .map(|r| r.0)
                    .collect(),
                numeric_tolerance,
                ignore_array_order,
                redact_values,
                redact: Vec::new(),
            },
        )
}

fn diff_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        xml(),
        prop::collection::vec(any::<u8>(), 0..300)
    ]
}

/// Only these pieces, so that keys and patterns often share a prefix and differ at a bracket.
fn strict_soup(
    pieces: &'static [&'static str],
    len: std::ops::Range<usize>,
) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(pieces), len).prop_map(|v| v.concat())
}

const BRACKETS: &[&str] = &["x", "[", "[*]", "]", "."];

proptest! {
    #![proptest_config(config())]

    /// Keys are whatever a backend sends, so flattened paths can hold unbalanced brackets
    /// that the configured `ignore` wildcards must survive.
    #[test]
    fn ignore_wildcards_survive_keys_with_brackets(
        keys in prop::collection::btree_set(strict_soup(BRACKETS, 1..4), 1..5),
        patterns in prop::collection::vec(strict_soup(BRACKETS, 1..4), 1..5),
    ) {
        let doc = |n: u8| serde_json::to_vec(&keys.iter().map(|k| (k.clone(), Value::from(n))).collect::<serde_json::Map<_, _>>()).unwrap();
        let rules = DiffRules { ignore: patterns.iter().filter_map(|p| ignore_rule(&format!("$.{p}")).ok()).map(|r| r.0).collect(), ..DiffRules::default() };
        let d = diff_bodies("application/json", &doc(1), &doc(2), &rules);
        prop_assert!(d.len() <= keys.len());
    }

    /// One syntax, one printer: the spelling `ficus check` suggests for an old `ignore` rule
    /// parses back to the same path, and old-spelling rules (`$.a[*].b`) load as that path.
    #[test]
    fn field_paths_print_as_they_parse_and_old_spellings_name_the_same_path(
        segs in prop::collection::vec(prop::sample::select(&["a", "b", "x[", "*", "0", "12", "@x", "#text"][..]), 1..5),
    ) {
        let new = segs.join(".");
        let p = ficus::translate::path::FieldPath::parse(&new).unwrap();
        prop_assert_eq!(p.to_string(), new.clone());
        let old: String = segs.iter().map(|s| match *s {
            "*" => "[*]".to_string(),
            n if n.bytes().all(|b| b.is_ascii_digit()) => format!("[{n}]"),
            k => format!(".{k}"),
        }).collect();
        if !old.contains("x[") {
            prop_assert_eq!(ignore_rule(&format!("${old}")).unwrap(), (p, true));
        }
    }

    #[test]
    fn diffs_never_panic_and_a_body_equals_itself(
        ct in prop::sample::select(&["application/json", "text/xml", "text/plain", "application/problem+json; charset=utf-8"][..]),
        a in diff_body(),
        b in diff_body(),
        rules in diff_rules(),
    ) {
        let ab = diff_bodies(ct, &a, &b, &rules);
        let ba = diff_bodies(ct, &b, &a, &rules);
        prop_assert_eq!(ab.len(), ba.len());
        prop_assert!(diff_bodies(ct, &a, &a, &rules).is_empty());
    }

    /// Noise learned from a pair explains every difference of that pair a volatile value can
    /// (another value or type), never a missing field; drift takes any diff without panicking.
    #[test]
    fn noise_learned_from_a_pair_explains_its_value_differences(
        ct in prop::sample::select(&["application/json", "text/xml", "text/plain"][..]),
        a in diff_body(),
        b in diff_body(),
        rules in diff_rules(),
    ) {
        use ficus::pipeline::diff::DiffKind;
        let d = diff_bodies(ct, &a, &b, &rules);
        let learned = ficus::pipeline::noise::Learned::default();
        learned.learn(&d);
        let overflow = learned.report("r", 100.0).overflow;
        let (kept, _) = learned.filter(d.clone());
        for k in &kept {
            let missing = matches!(k.kind, DiffKind::MissingOnPrimary | DiffKind::MissingOnShadow);
            prop_assert!(missing || overflow > 0, "{k:?} kept");
        }
        ficus::pipeline::drift::Drift::default().record(&d);
    }
}

// ---------------------------------------------------------------- headers, cookies, routing

proptest! {
    #![proptest_config(config())]

    #[test]
    fn cookie_and_query_values_never_span_a_separator(
        cookies in prop::collection::vec(header_value(HEADER_PIECES), 0..3),
        q in soup(FORM_PIECES, 24),
        name in prop::sample::select(&["a", "session", "canary", "", "é"][..]),
    ) {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(http::header::COOKIE, c);
        }
        if let Some(v) = context::cookie_value(&h, name) {
            prop_assert!(!v.contains(';'));
        }
        if let Some(v) = context::query_value(Some(&q), name) {
            prop_assert!(!v.contains('&'));
        }
    }

    #[test]
    fn hop_by_hop_stripping_and_client_addresses_never_panic(
        connection in prop::collection::vec(header_value(HEADER_PIECES), 0..3),
        xff in prop::collection::vec(header_value(HEADER_PIECES), 0..3),
        host in header_value(HEADER_PIECES),
        peer in ip(),
        keep_upgrade in any::<bool>(),
    ) {
        let mut h = HeaderMap::new();
        for c in connection {
            h.append(http::header::CONNECTION, c);
        }
        for x in &xff {
            h.append(context::X_FORWARDED_FOR, x.clone());
        }
        h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(http::header::HOST, host.clone());
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let client = context::client_address(&h, peer, &trusted);
        let listed = xff.iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|s| s.trim().parse() == Ok(client));
        prop_assert!(client == peer || listed);
        let _ = context::is_allowed_upgrade(&h, &["websocket".to_string()]);
        context::join_cookies(&mut h);
        context::strip_hop_by_hop(&mut h, keep_upgrade);
        prop_assert_eq!(h.get(http::header::HOST), Some(&host), "a client cannot remove Host");
        if !keep_upgrade {
            prop_assert!(
                !h.contains_key(http::header::UPGRADE) && !h.contains_key(http::header::CONNECTION),
                "hop-by-hop headers left: {:?}", h
            );
        }
        let peer_value = context::ip_value(peer);
        let info = context::ForwardedInfo { peer, peer_value: &peer_value, proto: "http", host: Some(&host) };
        context::apply_forwarded(&mut h, &info, &trusted);
        let xff = h.get(context::X_FORWARDED_FOR).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if trusted.iter().any(|n| n.contains(&peer)) {
            prop_assert!(xff.ends_with(&peer.to_string()), "X-Forwarded-For {:?} ends with the peer {}", xff, peer);
        } else {
            prop_assert_eq!(xff, peer.to_string(), "an untrusted peer's own list is never kept");
        }
        if let Some(v) = h.get("x-forwarded-host") {
            prop_assert!(v.to_str().is_ok() && v == host, "X-Forwarded-Host is the visible-ASCII host only: {:?}", v);
        }
        let _ = context::valid_request_id(host.as_bytes());
        let _ = context::valid_traceparent(host.as_bytes());
    }

    #[test]
    fn routing_never_panics(
        host in prop_oneof![Just(None), soup(&["example.com", ".", "a", "*", "é", ":8080", "EXAMPLE.COM"], 6).prop_map(Some)],
        p in path(),
        method in prop::sample::select(&["GET", "POST", "PROPFIND", "get"][..]),
        version in header_value(HEADER_PIECES),
        cookie in header_value(HEADER_PIECES),
        q in prop_oneof![Just(None), soup(FORM_PIECES, 16).prop_map(Some)],
    ) {
        let mut h = HeaderMap::new();
        h.insert(HeaderName::from_static("x-api-version"), version);
        h.insert(http::header::COOKIE, cookie);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let host = host.as_deref().map(route::host_without_port);
        let view = RequestView { host, path: &p, method: &method, headers: &h, query: q.as_deref() };
        if let Some(r) = routing().router.find(&view) {
            let _ = r.path.captures(&p);
        }
    }
}

// ---------------------------------------------------------------- the route index

/// Path pieces shared by route matchers and requests, few enough that they often meet.
const ROUTE_SEGMENTS: &[&str] = &["a", "b", "c"];

/// `/`, `/a`, `/a/b/`...: a route path in normal form, with or without a trailing slash.
fn route_path() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(ROUTE_SEGMENTS), 0..3),
        any::<bool>(),
    )
        .prop_map(|(segs, slash)| match segs.is_empty() {
            true => "/".to_string(),
            false => format!("/{}{}", segs.join("/"), if slash { "/" } else { "" }),
        })
}

/// A template of literal segments, whole-segment and in-segment parameters, and maybe a
/// catch-all at the end; parameter names are unique within the template.
fn route_template() -> impl Strategy<Value = String> {
    let seg = prop::sample::select(&["a", "b", "{p}", "x{p}", "{p}.j"][..]);
    (
        prop::collection::vec(seg, 0..3),
        prop::sample::select(&["", "/", "/{*rest}"][..]),
    )
        .prop_map(|(segs, end)| {
            let segs: Vec<String> = segs
                .iter()
                .enumerate()
                .map(|(i, s)| s.replace("{p}", &format!("{{p{i}}}")))
                .collect();
            match (segs.is_empty(), end) {
                (true, "/{*rest}") => "/{*rest}".to_string(),
                (true, _) => "/".to_string(),
                (false, end) => format!("/{}{end}", segs.join("/")),
            }
        })
}

/// One route of a random table: any path matcher, and sometimes hosts, methods and a header.
fn route_match() -> impl Strategy<Value = String> {
    let path = prop_oneof![
        1 => Just(String::new()),
        1 => route_path().prop_map(|p| format!("path: '{p}'")),
        1 => route_path().prop_map(|p| format!("path_prefix: '{p}'")),
        3 => route_template().prop_map(|t| format!("path_template: '{t}'")),
        1 => prop::sample::select(&["/a/.*", "/[ab]+", "/(a|b)/c/?", "/x.*"][..]).prop_map(|r| format!("path_regex: '{r}'")),
    ];
    let hosts = prop::sample::select(
        &[
            "",
            "hosts: [a.example.com]",
            "hosts: ['*.example.com']",
            "hosts: [example.com, b.example.com]",
        ][..],
    );
    let methods =
        prop::sample::select(&["", "methods: [GET]", "methods: [POST]", "methods: [GET, POST]"][..]);
    let header = prop::sample::select(&["", "headers: [{ name: x-v, equals: '1' }]"][..]);
    (path, hosts, methods, header).prop_map(|(p, h, m, c)| {
        [p.as_str(), h, m, c]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// A request's path, host, method and `x-v` header, drawn from what the routes name.
fn route_request() -> impl Strategy<Value = (String, Option<&'static str>, &'static str, Option<&'static str>)>
{
    let seg = prop::sample::select(&["a", "b", "c", "x", "x1", "1.j", "xa.j", ""][..]);
    let path = (prop::collection::vec(seg, 0..4), any::<bool>()).prop_map(|(segs, slash)| {
        format!(
            "/{}{}",
            segs.join("/"),
            if slash && !segs.is_empty() { "/" } else { "" }
        )
    });
    let host = prop::sample::select(
        &[
            None,
            Some("example.com"),
            Some("a.example.com"),
            Some("z.a.example.com"),
            Some("other.org"),
        ][..],
    );
    let method = prop::sample::select(&["GET", "POST", "PUT"][..]);
    let header = prop::sample::select(&[None, Some("1"), Some("2")][..]);
    (path, host, method, header)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..config() })]

    /// The route index answers exactly as trying every route in file order would.
    #[test]
    fn the_route_index_finds_the_same_route_as_the_file_order_scan(
        table in prop::collection::vec(route_match(), 1..12),
        requests in prop::collection::vec(route_request(), 1..24),
    ) {
        let mut yaml = String::from("listeners: [{ name: main, bind: '127.0.0.1:0' }]\nadmin: { bind: '127.0.0.1:0' }\nreload: { watch: false }\nupstreams: { a: { endpoints: ['http://127.0.0.1:9'] } }\nroutes:\n");
        for (i, m) in table.iter().enumerate() {
            yaml.push_str(&format!("  - {{ name: r{i}, match: {{ {m} }}, upstream: a }}\n"));
        }
        let snap = {
            let _rt = runtime().enter();
            // `Embedded` wants a `&'static str`: a few hundred bytes per case, gone with the process.
            let text: &'static str = Box::leak(yaml.into_boxed_str());
            compiled(ConfigSource::Embedded { name: "route-index.yaml".into(), text, base_dir: PathBuf::from(".") })
        };
        for (path, host, method, header) in &requests {
            let mut h = HeaderMap::new();
            if let Some(v) = header {
                h.insert(HeaderName::from_static("x-v"), HeaderValue::from_static(v));
            }
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let view = RequestView { host: *host, path, method: &method, headers: &h, query: None };
            let indexed = snap.router.find(&view).map(|r| r.name.clone());
            let scanned = snap.router.find_linear(&view).map(|r| r.name.clone());
            prop_assert_eq!(indexed, scanned, "{} {:?} {:?}", path, host, method);
        }
    }
}

// ---------------------------------------------------------------- rate-limit keys and sticky keys

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..config() })]

    #[test]
    fn rate_limit_keys_and_sticky_keys_never_panic(
        tenant in header_value(HEADER_PIECES),
        cookie in header_value(HEADER_PIECES),
        xff in header_value(HEADER_PIECES),
        user in header_value(HEADER_PIECES),
        q in prop_oneof![Just(None), soup(FORM_PIECES, 16).prop_map(Some)],
        client in ip(),
        claims in prop_oneof![Just(None), json_value().prop_map(|v| match v {
            Value::Object(m) => Some(Claims(m.into_iter().collect())),
            other => Some(Claims(BTreeMap::from([("sub".to_string(), other)]))),
        })],
    ) {
        let mut h = HeaderMap::new();
        h.insert(HeaderName::from_static("x-tenant"), tenant);
        h.insert(http::header::COOKIE, cookie);
        h.insert(context::X_FORWARDED_FOR, xff);
        h.insert(HeaderName::from_static("x-user-id"), user.clone());
        for r in routing().router.routes() {
            let facts = KeyFacts {
                client,
                route: &r.name,
                path: "/",
                query: q.as_deref(),
                headers: &h,
                claims: claims.as_ref(),
                client_cert: None,
            };
            if let Some(rl) = &r.rate_limits {
                let _ = runtime().block_on(rl.check(&facts));
            }
            if let Some(m) = &r.migration {
                let overrides = [(HeaderName::from_static("x-ficus-backend"), user.clone())];
                let _ = m.choose(&facts, &overrides);
            }
        }
    }
}

/// Not a property but the same promise: nesting a client controls cannot exhaust the stack
/// (that would abort the process, which no `catch_unwind` can contain).
#[test]
fn deeply_nested_bodies_are_refused_or_translated_without_a_stack_overflow() {
    let xml = format!("{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000));
    let json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let obj = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    for (name, d, t) in plans() {
        let plan = t.plan(*d).unwrap();
        for (ct, body) in [
            ("text/xml", &xml),
            ("application/xml", &xml),
            ("application/json", &json),
            ("application/json", &obj),
        ] {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            let status = (*d == Direction::Response).then_some(StatusCode::OK);
            let _ = plan.translate(status, &mut h, body.as_bytes()).map(|_| name);
        }
    }
    for ct in ["application/json", "text/xml"] {
        for body in [&xml, &json, &obj] {
            let _ = diff_bodies(ct, body.as_bytes(), b"{}", &DiffRules::default());
        }
    }
}
