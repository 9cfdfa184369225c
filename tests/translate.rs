//! The anti-corruption layer end to end: real upstreams speaking SOAP, XML, form-encoded and a
//! legacy JSON dialect behind ficus, golden fixtures through the offline engine and the
//! `ficus translate` binary, and the JSON -> XML -> JSON property.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::{json, Value};
use support::*;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translate")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

/// What a legacy upstream saw of one request.
#[derive(Debug, Clone, Default)]
struct Seen {
    method: String,
    path_and_query: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// An upstream that records each request and answers with a fixed status, type and body.
async fn legacy(status: u16, content_type: &'static str, body: Vec<u8>) -> (Upstream, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let body = Bytes::from(body);
    let up = Upstream::start(move |req: Request<Incoming>| {
        let log = log.clone();
        let body = body.clone();
        async move {
            let (parts, b) = req.into_parts();
            let got = b.collect().await.unwrap().to_bytes();
            log.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                path_and_query: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                headers: parts.headers,
                body: got,
            });
            let mut r = Response::new(full(body));
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            r.headers_mut()
                .insert("content-type", content_type.parse().unwrap());
            r.headers_mut().insert("x-powered-by", "cgi".parse().unwrap());
            r
        }
    })
    .await;
    (up, seen)
}

/// The fixture config with every upstream pointed at `url`.
fn fixture_config(url: &str) -> String {
    String::from_utf8(fixture("ficus.yaml"))
        .unwrap()
        .replace("http://127.0.0.1:9", url)
}

fn post(url: &str, ct: &str, body: impl Into<Bytes>) -> Request<Body> {
    Request::post(url)
        .header("content-type", ct)
        .body(full(body.into()))
        .unwrap()
}

#[tokio::test]
async fn json_request_reaches_the_soap_service_as_an_envelope_and_the_answer_comes_back_as_json() {
    let (up, seen) = legacy(
        200,
        "text/xml; charset=utf-8",
        fixture("create_order.response.xml"),
    )
    .await;
    let f = Ficus::start(&fixture_config(&up.url())).await;
    let a = send(
        &client(),
        post(
            &f.url("/api/orders"),
            "application/json",
            fixture("create_order.request.json"),
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.headers["content-length"], a.body.len().to_string().as_str());
    let expected: Value = serde_json::from_slice(&fixture("create_order.response.expected.json")).unwrap();
    assert_eq!(a.json(), expected);

    let s = seen.lock().unwrap()[0].clone();
    assert_eq!(s.method, "POST");
    assert_eq!(s.path_and_query, "/OrderService.asmx");
    assert_eq!(s.headers["soapaction"], "\"urn:orders#CreateOrder\"");
    assert_eq!(s.headers["content-type"], "text/xml; charset=utf-8");
    assert_eq!(s.body, Bytes::from(fixture("create_order.request.expected.xml")));
    f.shutdown().await;
}

#[tokio::test]
async fn soap_fault_becomes_problem_json_with_the_mapped_status() {
    let (up, _) = legacy(500, "text/xml", fixture("create_order.fault.xml")).await;
    let f = Ficus::start(&fixture_config(&up.url())).await;
    let a = send(
        &client(),
        post(
            &f.url("/api/orders"),
            "application/json",
            fixture("create_order.request.json"),
        ),
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.text());
    assert_eq!(a.headers["content-type"], "application/problem+json");
    let expected: Value = serde_json::from_slice(&fixture("create_order.fault.expected.json")).unwrap();
    assert_eq!(a.json(), expected);
    f.shutdown().await;
}

#[tokio::test]
async fn path_template_captures_rewrite_the_legacy_path_and_xml_becomes_json() {
    let xml = br#"<?xml version="1.0"?><Order id="42"><Total>1999</Total><Lines><Line><Sku>A</Sku></Line></Lines></Order>"#;
    let (up, seen) = legacy(200, "application/xml", xml.to_vec()).await;
    let f = Ficus::start(&fixture_config(&up.url())).await;
    let a = get(&f.url("/api/v2/orders/42?debug=1&expand=lines")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.json(),
        json!({"id": "42", "total": "19.99", "lines": [{"Sku": "A"}]})
    );
    let s = seen.lock().unwrap()[0].clone();
    assert_eq!(s.path_and_query, "/cgi-bin/orders.pl?expand=lines&id=42&fmt=xml");
    assert_eq!(s.headers["accept"], "application/xml");
    f.shutdown().await;
}

#[tokio::test]
async fn a_get_becomes_a_soap_post_whose_envelope_is_built_from_path_captures() {
    let (up, seen) = legacy(200, "text/xml", SOAP_ORDER.as_bytes().to_vec()).await;
    let t = "    request:\n      method: POST\n      path: /Service.asmx\n      body: { OrderId: '{id}', Kind: full }\n      ops:\n        - soap_wrap: { action: 'urn:GetOrder', body_element: GetOrder, namespace: 'urn:o' }\n    response:\n      content_types: [text/xml]\n      ops: [{ soap_unwrap: {} }, { unwrap: { key: Order } }]";
    let yaml = small_config(&up.url(), t).replace("path_prefix: /", "path_template: '/orders/{id}'");
    let f = Ficus::start(&yaml).await;
    let a = get(&f.url("/orders/7")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), json!({"ORDER_NO": "7", "TOTAL": "1250"}));
    let s = seen.lock().unwrap()[0].clone();
    assert_eq!(
        (s.method.as_str(), s.path_and_query.as_str()),
        ("POST", "/Service.asmx")
    );
    assert_eq!(s.headers["soapaction"], "\"urn:GetOrder\"");
    let body = std::str::from_utf8(&s.body).unwrap();
    assert!(
        body.contains(r#"<GetOrder xmlns="urn:o"><Kind>full</Kind><OrderId>7</OrderId></GetOrder>"#),
        "{body}"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn legacy_json_dialect_with_dates_enums_and_cents_is_modernised() {
    let (up, _) = legacy(200, "application/json", fixture("customer.response.json")).await;
    let f = Ficus::start(&fixture_config(&up.url())).await;
    let a = get(&f.url("/api/customers/42")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let expected: Value = serde_json::from_slice(&fixture("customer.response.expected.json")).unwrap();
    assert_eq!(a.json(), expected);
    assert_eq!(a.headers["x-api-version"], "2");
    assert!(a.headers.get("x-powered-by").is_none());
    f.shutdown().await;
}

#[tokio::test]
async fn legacy_200_with_an_err_body_becomes_a_404_problem() {
    let (up, _) = legacy(200, "application/json", fixture("customer.error.json")).await;
    let f = Ficus::start(&fixture_config(&up.url())).await;
    let a = get(&f.url("/api/customers/77")).await;
    assert_eq!(a.status, 404, "{}", a.text());
    assert_eq!(a.headers["content-type"], "application/problem+json");
    let expected: Value = serde_json::from_slice(&fixture("customer.error.expected.json")).unwrap();
    assert_eq!(a.json(), expected);
    f.shutdown().await;
}

#[tokio::test]
async fn json_request_reaches_the_form_endpoint_form_encoded_and_the_form_answer_becomes_json() {
    let (up, seen) = legacy(
        200,
        "application/x-www-form-urlencoded",
        fixture("signup.response.form"),
    )
    .await;
    let f = Ficus::start(&fixture_config(&up.url())).await;
    let a = send(
        &client(),
        post(
            &f.url("/api/signup"),
            "application/json",
            fixture("signup.request.json"),
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let expected: Value = serde_json::from_slice(&fixture("signup.response.expected.json")).unwrap();
    assert_eq!(a.json(), expected);
    let s = seen.lock().unwrap()[0].clone();
    assert_eq!(s.headers["content-type"], "application/x-www-form-urlencoded");
    assert_eq!(s.body, Bytes::from(fixture("signup.request.expected.form")));
    assert_eq!(s.headers["content-length"], s.body.len().to_string().as_str());
    f.shutdown().await;
}

fn small_config(url: &str, transform: &str) -> String {
    format!(
        "\
log: {{ level: warn, access_log: false }}
listeners: [{{ name: main, bind: '127.0.0.1:0' }}]
admin: {{ bind: '127.0.0.1:0' }}
reload: {{ watch: false }}
upstreams:
  app: {{ endpoints: ['{url}'] }}
transforms:
  t:
{transform}
routes:
  - name: r
    match: {{ path_prefix: / }}
    upstream: app
    transform: t
"
    )
}

#[tokio::test]
async fn malformed_legacy_xml_is_a_502_problem_never_a_partial_body() {
    let (up, _) = legacy(200, "text/xml", b"<Order><Id>1</Id><Lines></Order>".to_vec()).await;
    let t = "    response:\n      content_types: [text/xml]\n      ops: [{ xml_to_json: {} }]";
    let f = Ficus::start(&small_config(&up.url(), t)).await;
    let a = get(&f.url("/x")).await;
    a.assert_problem(502, "translation-failed");
    assert!(
        a.json()["detail"].as_str().unwrap().contains("XML"),
        "{}",
        a.text()
    );
    f.shutdown().await;
}

#[tokio::test]
async fn bodies_of_other_content_types_stream_through_untouched() {
    let png: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let (up, _) = legacy(200, "image/png", png.clone()).await;
    let t = "    response:\n      max_body: 1KiB\n      ops: [{ rename: { path: a, to: b } }]";
    let f = Ficus::start(&small_config(&up.url(), t)).await;
    let a = get(&f.url("/x")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, Bytes::from(png));
    f.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_to_translate_get_413_for_requests_and_502_for_answers() {
    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(4096));
    let (up, seen) = legacy(200, "application/json", big.clone().into_bytes()).await;
    let t = "    request:\n      max_body: 1KiB\n      ops: [{ rename: { path: a, to: b } }]\n    response:\n      max_body: 1KiB\n      ops: [{ rename: { path: a, to: b } }]";
    let f = Ficus::start(&small_config(&up.url(), t)).await;
    let a = send(&client(), post(&f.url("/x"), "application/json", big.clone())).await;
    a.assert_problem(413, "body-too-large");
    assert_eq!(
        seen.lock().unwrap().len(),
        0,
        "nothing half-translated reached the backend"
    );
    let a = send(&client(), post(&f.url("/x"), "application/json", "{\"a\":1}")).await;
    a.assert_problem(502, "translation-failed");
    assert_eq!(seen.lock().unwrap()[0].body, Bytes::from_static(b"{\"b\":1}"));
    f.shutdown().await;
}

#[tokio::test]
async fn compressed_answers_are_not_requested_and_refused_with_502_if_sent_anyway() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let up = Upstream::start(move |req: Request<Incoming>| {
        let log = log.clone();
        async move {
            log.lock()
                .unwrap()
                .push(req.headers().get("accept-encoding").cloned());
            let mut r = Response::new(full(Bytes::from_static(b"\x1f\x8b\x08\x00binary")));
            r.headers_mut()
                .insert("content-type", "text/xml".parse().unwrap());
            r.headers_mut()
                .insert("content-encoding", "gzip".parse().unwrap());
            r
        }
    })
    .await;
    let t = "    response:\n      content_types: [text/xml]\n      ops: [{ xml_to_json: {} }]";
    let f = Ficus::start(&small_config(&up.url(), t)).await;
    let req = Request::get(f.url("/x"))
        .header("accept-encoding", "gzip, br")
        .body(empty())
        .unwrap();
    let a = send(&client(), req).await;
    a.assert_problem(502, "translation-failed");
    assert_eq!(seen.lock().unwrap()[0], None, "accept-encoding was not removed");
    f.shutdown().await;
}

#[tokio::test]
async fn latin1_legacy_xml_arrives_as_utf8_json() {
    let mut body = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><c><name>".to_vec();
    body.extend_from_slice(b"Fran\xe7oise M\xfcller");
    body.extend_from_slice(b"</name></c>");
    let (up, _) = legacy(200, "text/xml; charset=ISO-8859-1", body).await;
    let t = "    response:\n      content_types: [text/xml]\n      ops: [{ xml_to_json: {} }]";
    let f = Ficus::start(&small_config(&up.url(), t)).await;
    let a = get(&f.url("/x")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), json!({"name": "Françoise Müller"}));
    f.shutdown().await;
}

#[tokio::test]
async fn a_non_ascii_xml_encoding_in_a_request_is_a_400_problem_not_an_empty_reply() {
    let (up, seen) = legacy(200, "application/json", b"{}".to_vec()).await;
    let t = "    request:\n      content_types: [text/xml]\n      ops: [{ xml_to_json: {} }]";
    let f = Ficus::start(&small_config(&up.url(), t)).await;
    // The issue's body: an unquoted, non-ASCII encoding and no charset in the Content-Type.
    for body in [
        "<?xml encoding=é?><order><id>1</id></order>".as_bytes().to_vec(),
        b"<?xml encoding=\xe9?><order><id>1</id></order>".to_vec(),
        "<?xml version=\"1.0\" encoding=\"é\"?><order/>"
            .as_bytes()
            .to_vec(),
    ] {
        let a = send(&client(), post(&f.url("/x"), "text/xml", body)).await;
        a.assert_problem(400, "request-translation-failed");
    }
    let ok = send(
        &client(),
        post(
            &f.url("/x"),
            "text/xml",
            "<?xml version=\"1.0\"?><order><id>1</id></order>",
        ),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "only the well-formed body reaches the backend"
    );
    f.shutdown().await;
}

#[tokio::test]
async fn a_windows_1252_request_reaches_the_backend_as_utf8_with_the_euro_sign() {
    let (up, seen) = legacy(200, "application/json", b"{}".to_vec()).await;
    let t = "    request:\n      content_types: [text/xml]\n      ops: [{ xml_to_json: {} }]";
    let f = Ficus::start(&small_config(&up.url(), t)).await;
    let body = b"<?xml version=\"1.0\" encoding=\"windows-1252\"?><o><price>\x80 5</price></o>".to_vec();
    let a = send(&client(), post(&f.url("/x"), "text/xml", body)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let got: Value = serde_json::from_slice(&seen.lock().unwrap()[0].body).unwrap();
    assert_eq!(got, json!({"price": "€ 5"}));
    f.shutdown().await;
}

#[tokio::test]
async fn malformed_client_json_for_a_translated_route_is_a_400() {
    let (up, seen) = legacy(200, "application/json", b"{}".to_vec()).await;
    let t = "    request:\n      ops: [{ json_to_xml: { root: r } }]";
    let f = Ficus::start(&small_config(&up.url(), t)).await;
    let a = send(&client(), post(&f.url("/x"), "application/json", "{not json")).await;
    a.assert_problem(400, "request-translation-failed");
    assert!(seen.lock().unwrap().is_empty());
    f.shutdown().await;
}

#[tokio::test]
async fn schema_violations_are_a_400_listing_each_failing_pointer() {
    let (up, seen) = legacy(200, "application/json", b"{}".to_vec()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("order.schema.json"),
        r#"{"type":"object","required":["customer_id","lines"],
            "properties":{"customer_id":{"type":"string"},
              "lines":{"type":"array","minItems":1,"items":{"type":"object","required":["sku"],
                "properties":{"sku":{"type":"string"},"quantity":{"type":"integer","minimum":1}}}}}}"#,
    )
    .unwrap();
    let yaml = format!(
        "\
log: {{ level: warn, access_log: false }}
listeners: [{{ name: main, bind: '127.0.0.1:0' }}]
admin: {{ bind: '127.0.0.1:0' }}
reload: {{ watch: false }}
upstreams:
  app: {{ endpoints: ['{}'] }}
routes:
  - name: r
    match: {{ path_prefix: / }}
    upstream: app
    validate: {{ schema: order.schema.json }}
",
        up.url()
    );
    let f = Ficus::start_in(dir, &yaml).await.unwrap();
    let bad = r#"{"customer_id": 7, "lines": [{"sku": "A", "quantity": 0}, {"quantity": 2}]}"#;
    let a = send(&client(), post(&f.url("/orders"), "application/json", bad)).await;
    a.assert_problem(400, "schema-validation-failed");
    let mut pointers: Vec<String> = a.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap().to_string())
        .collect();
    pointers.sort();
    assert_eq!(pointers, vec!["/customer_id", "/lines/0/quantity", "/lines/1"]);
    assert!(seen.lock().unwrap().is_empty());
    let good = r#"{"customer_id": "C1", "lines": [{"sku": "A", "quantity": 1}]}"#;
    let a = send(&client(), post(&f.url("/orders"), "application/json", good)).await;
    assert_eq!(a.status, 200);
    assert_eq!(seen.lock().unwrap()[0].body, Bytes::from(good));
    f.shutdown().await;
}

fn migration_config(legacy_url: &str, modern_url: &str, percent: u32, shadow: bool) -> String {
    let shadow = if shadow {
        "\n      shadow: { percent: 100, allow_writes: true }"
    } else {
        ""
    };
    format!(
        "\
log: {{ level: warn, access_log: false }}
listeners: [{{ name: main, bind: '127.0.0.1:0' }}]
admin: {{ bind: '127.0.0.1:0' }}
reload: {{ watch: false }}
upstreams:
  legacy: {{ endpoints: ['{legacy_url}'] }}
  modern: {{ endpoints: ['{modern_url}'] }}
transforms:
  soap:
    request:
      path: /Service.asmx
      ops:
        - soap_wrap: {{ action: 'urn:GetOrder', body_element: GetOrder, namespace: 'urn:o' }}
    response:
      content_types: [text/xml]
      ops:
        - soap_unwrap: {{}}
        - unwrap: {{ key: Order }}
        - rename: {{ path: ORDER_NO, to: id }}
        - money: {{ path: TOTAL, to: decimal }}
        - rename: {{ path: TOTAL, to: total }}
routes:
  - name: orders
    match: {{ path_prefix: /orders }}
    migration:
      legacy: {{ upstream: legacy, transform: soap }}
      modern: {{ upstream: modern }}
      modern_percent: {percent}{shadow}
"
    )
}

const SOAP_ORDER: &str = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>
<GetOrderResponse xmlns="urn:o"><Order><ORDER_NO>7</ORDER_NO><TOTAL>1250</TOTAL></Order></GetOrderResponse>
</s:Body></s:Envelope>"#;

#[tokio::test]
async fn each_side_is_spoken_to_in_its_dialect_and_the_client_sees_one_json_api() {
    let (leg, leg_seen) = legacy(200, "text/xml", SOAP_ORDER.as_bytes().to_vec()).await;
    let (modern, modern_seen) =
        legacy(200, "application/json", br#"{"id":"7","total":"12.50"}"#.to_vec()).await;
    for percent in [0, 100] {
        let f = Ficus::start(&migration_config(&leg.url(), &modern.url(), percent, false)).await;
        let a = send(
            &client(),
            post(&f.url("/orders/7"), "application/json", r#"{"id":"7"}"#),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(
            a.json(),
            json!({"id": "7", "total": "12.50"}),
            "modern_percent {percent}"
        );
        f.shutdown().await;
    }
    let l = leg_seen.lock().unwrap()[0].clone();
    assert_eq!(l.path_and_query, "/Service.asmx");
    assert!(std::str::from_utf8(&l.body)
        .unwrap()
        .contains("<GetOrder xmlns=\"urn:o\"><id>7</id></GetOrder>"));
    let m = modern_seen.lock().unwrap()[0].clone();
    assert_eq!(m.path_and_query, "/orders/7");
    assert_eq!(m.body, Bytes::from_static(br#"{"id":"7"}"#));
}

#[tokio::test]
async fn shadow_copies_are_translated_for_the_other_side_and_compared_in_the_modern_shape() {
    let (leg, leg_seen) = legacy(200, "text/xml", SOAP_ORDER.as_bytes().to_vec()).await;
    let (modern, _) = legacy(200, "application/json", br#"{"id":"7","total":"12.50"}"#.to_vec()).await;
    let f = Ficus::start(&migration_config(&leg.url(), &modern.url(), 100, true)).await;
    let a = send(
        &client(),
        post(&f.url("/orders/7"), "application/json", r#"{"id":"7"}"#),
    )
    .await;
    assert_eq!(a.json(), json!({"id": "7", "total": "12.50"}));
    let admin = f.admin_url("/metrics");
    let matched = eventually(Duration::from_secs(10), || {
        let admin = admin.clone();
        async move {
            let m = get(&admin).await.text();
            metric(
                &m,
                "ficus_shadow_comparisons_total{route=\"orders\",result=\"match\"}",
            ) == Some(1.0)
        }
    })
    .await;
    let m = get(&admin).await.text();
    assert!(
        matched,
        "{}",
        m.lines()
            .filter(|l| l.contains("shadow"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The shadow copy reached legacy as SOAP.
    let l = leg_seen.lock().unwrap()[0].clone();
    assert_eq!(l.headers["soapaction"], "\"urn:GetOrder\"");
    f.shutdown().await;
}

#[tokio::test]
async fn unknown_transforms_and_unbound_captures_are_config_errors_with_their_key() {
    let yaml = small_config("http://127.0.0.1:9", "    request:\n      path: '/x?id={id}'")
        .replace("transform: t", "transform: nope");
    let e = Ficus::try_start(&yaml).await.err().unwrap().to_string();
    assert!(
        e.contains("routes[0].transform: no transform named `nope`"),
        "{e}"
    );
    let yaml = small_config("http://127.0.0.1:9", "    request:\n      path: '/x?id={id}'");
    let e = Ficus::try_start(&yaml).await.err().unwrap().to_string();
    assert!(e.contains("routes[0].transform") && e.contains("{id}"), "{e}");
    let yaml = small_config(
        "http://127.0.0.1:9",
        "    response:\n      ops: [{ date: { path: d, from: 'dd/MM/yy', to: rfc3339 } }]",
    );
    let e = Ficus::try_start(&yaml).await.err().unwrap().to_string();
    assert!(e.contains("transforms.t.response.ops[0]"), "{e}");
}

// ------------------------------------------------------------------ golden files, offline

struct Golden {
    route: &'static str,
    direction: ficus::translate::Direction,
    content_type: &'static str,
    status: u16,
    input: &'static str,
    expected: &'static str,
    expected_status: Option<u16>,
}

const GOLDEN: &[Golden] = {
    use ficus::translate::Direction::{Request as Req, Response as Resp};
    &[
        Golden {
            route: "orders_create",
            direction: Req,
            content_type: "application/json",
            status: 200,
            input: "create_order.request.json",
            expected: "create_order.request.expected.xml",
            expected_status: None,
        },
        Golden {
            route: "orders_create",
            direction: Resp,
            content_type: "text/xml",
            status: 200,
            input: "create_order.response.xml",
            expected: "create_order.response.expected.json",
            expected_status: Some(200),
        },
        Golden {
            route: "orders_create",
            direction: Resp,
            content_type: "text/xml",
            status: 500,
            input: "create_order.fault.xml",
            expected: "create_order.fault.expected.json",
            expected_status: Some(422),
        },
        Golden {
            route: "customers",
            direction: Resp,
            content_type: "application/json",
            status: 200,
            input: "customer.response.json",
            expected: "customer.response.expected.json",
            expected_status: Some(200),
        },
        Golden {
            route: "customers",
            direction: Resp,
            content_type: "application/json",
            status: 200,
            input: "customer.error.json",
            expected: "customer.error.expected.json",
            expected_status: Some(404),
        },
        Golden {
            route: "signup",
            direction: Req,
            content_type: "application/json",
            status: 200,
            input: "signup.request.json",
            expected: "signup.request.expected.form",
            expected_status: None,
        },
        Golden {
            route: "signup",
            direction: Resp,
            content_type: "application/x-www-form-urlencoded",
            status: 200,
            input: "signup.response.form",
            expected: "signup.response.expected.json",
            expected_status: Some(200),
        },
    ]
};

#[test]
fn golden_fixtures_translate_to_their_expected_modern_and_legacy_forms() {
    let config = fixtures().join("ficus.yaml");
    for g in GOLDEN {
        let body = fixture(g.input);
        let out = ficus::translate::offline::run(
            &config,
            &ficus::translate::offline::Input {
                route: g.route,
                direction: g.direction,
                side: ficus::pipeline::context::Side::Legacy,
                content_type: Some(g.content_type),
                status: g.status,
                path: None,
                method: None,
                headers: &[],
                body: &body,
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", g.input));
        let expected = fixture(g.expected);
        if g.expected.ends_with(".json") {
            let want: Value = serde_json::from_slice(&expected).unwrap();
            let got: Value = serde_json::from_slice(&out.body).unwrap();
            assert_eq!(got, want, "{}", g.input);
        } else {
            assert_eq!(out.body, Bytes::from(expected), "{}", g.input);
        }
        assert_eq!(out.status, g.expected_status, "{}", g.input);
    }
}

#[test]
fn soap_request_round_trips_back_to_the_modern_json() {
    // JSON -> legacy envelope (request transform) -> JSON by the inverse ops: nothing is lost.
    let config = fixtures().join("ficus.yaml");
    let body = fixture("create_order.request.json");
    let out = ficus::translate::offline::run(
        &config,
        &ficus::translate::offline::Input {
            route: "orders_create",
            direction: ficus::translate::Direction::Request,
            side: ficus::pipeline::context::Side::Legacy,
            content_type: None,
            status: 200,
            path: None,
            method: None,
            headers: &[],
            body: &body,
        },
    )
    .unwrap();
    let xml = std::str::from_utf8(&out.body).unwrap();
    let unwrapped = match ficus::translate::soap::unwrap(xml, &["Lines.Line".into()], false).unwrap() {
        ficus::translate::soap::Unwrapped::Body(v) => v,
        ficus::translate::soap::Unwrapped::Fault(f) => panic!("{f:?}"),
    };
    assert_eq!(unwrapped["CUST_NO"], "C-42");
    assert_eq!(unwrapped["DELIVERY_DT"], "01/03/2024");
    assert_eq!(unwrapped["Lines"]["Line"][0]["PRICE_CENTS"], "1999");
    assert_eq!(unwrapped["Lines"]["Line"][1]["PRICE_CENTS"], "500");
}

#[test]
fn the_ficus_translate_binary_runs_the_same_engine() {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args(["translate", "--config"])
        .arg(fixtures().join("ficus.yaml"))
        .args(["--route", "customers", "--direction", "response"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&fixture("customer.error.json"))
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let want: Value = serde_json::from_slice(&fixture("customer.error.expected.json")).unwrap();
    assert_eq!(got, want);
    assert!(String::from_utf8_lossy(&out.stderr).contains("status: 404"));
}

// ------------------------------------------------------------------ offline == live

/// The demo's transforms (config/demo.yaml, embedded in the binary) under its `orders` route,
/// served by the legacy side alone.
fn demo_orders_config(url: &str) -> String {
    let demo = ficus::demo::DEMO_CONFIG;
    let transforms = &demo[demo.find("\ntransforms:\n").unwrap()..demo.find("\nroutes:\n").unwrap()];
    format!(
        "\
log: {{ level: warn, access_log: false }}
listeners: [{{ name: main, bind: '127.0.0.1:0' }}]
admin: {{ bind: '127.0.0.1:0' }}
reload: {{ watch: false }}
upstreams:
  legacy: {{ endpoints: ['{url}'] }}
{transforms}
routes:
  - name: orders
    match: {{ path_template: '/api/orders/{{id}}' }}
    upstream: legacy
    transform: legacy-orders
"
    )
}

/// One request as a client sends it, and the route that serves it.
struct Case {
    config: fn(&str) -> String,
    route: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
}

const AGREE: &[Case] = &[
    // The demo's GET becomes a SOAP GetOrder POST whose envelope is built from the path.
    Case {
        config: demo_orders_config,
        route: "orders",
        method: "GET",
        path: "/api/orders/7",
        headers: &[("accept-encoding", "gzip")],
        body: "",
    },
    // Routed on the normalised path (`%37` is `7`), and the capture is taken from it.
    Case {
        config: demo_orders_config,
        route: "orders",
        method: "GET",
        path: "/api/./orders/%37",
        headers: &[],
        body: "",
    },
    Case {
        config: fixture_config,
        route: "orders_create",
        method: "POST",
        path: "/api/orders",
        headers: &[("content-type", "application/json")],
        body: "create_order.request.json",
    },
    Case {
        config: fixture_config,
        route: "order",
        method: "GET",
        path: "/api/v2/orders/42?debug=1&expand=lines",
        headers: &[],
        body: "",
    },
    Case {
        config: fixture_config,
        route: "signup",
        method: "POST",
        path: "/api/signup",
        headers: &[("content-type", "application/json")],
        body: "signup.request.json",
    },
];

/// What `ficus translate` printed: the request line and headers on stderr, the body on stdout.
fn offline_binary(config: &std::path::Path, c: &Case, body: &[u8]) -> Seen {
    use std::io::Write as _;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ficus"));
    cmd.args(["translate", "--config"])
        .arg(config)
        .args(["--route", c.route, "--direction", "request", "--side", "legacy"])
        .args(["--method", c.method, "--path", c.path]);
    for (k, v) in c.headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let meta = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{meta}");
    let mut lines = meta.lines();
    let (method, path) = lines.next().unwrap().split_once(' ').unwrap();
    let mut headers = http::HeaderMap::new();
    for l in lines {
        let (k, v) = l.split_once(": ").unwrap();
        headers.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    Seen {
        method: method.to_string(),
        path_and_query: path.to_string(),
        headers,
        body: Bytes::from(out.stdout),
    }
}

fn assert_same_request(live: &Seen, offline: &Seen, what: &str) {
    assert_eq!(offline.method, live.method, "{what}: method");
    assert_eq!(offline.path_and_query, live.path_and_query, "{what}: path");
    for h in [
        "content-type",
        "soapaction",
        "content-length",
        "accept",
        "accept-encoding",
    ] {
        assert_eq!(offline.headers.get(h), live.headers.get(h), "{what}: {h}");
    }
    assert_eq!(offline.body, live.body, "{what}: body");
}

#[tokio::test]
async fn ficus_translate_prints_exactly_what_the_legacy_backend_receives() {
    for c in AGREE {
        let body = if c.body.is_empty() {
            Vec::new()
        } else {
            fixture(c.body)
        };
        let (up, seen) = legacy(200, "text/plain", Vec::new()).await;
        let f = Ficus::start(&(c.config)(&up.url())).await;
        let mut req = Request::builder().method(c.method).uri(f.url(c.path));
        for (k, v) in c.headers {
            req = req.header(*k, *v);
        }
        let a = send(&client(), req.body(full(body.clone())).unwrap()).await;
        assert_eq!(a.status, 200, "{} {}: {}", c.method, c.path, a.text());
        let live = seen.lock().unwrap()[0].clone();

        // The library function the CLI calls, on the same config file.
        let out = ficus::translate::offline::run(
            &f.config_path,
            &ficus::translate::offline::Input {
                route: c.route,
                direction: ficus::translate::Direction::Request,
                side: ficus::pipeline::context::Side::Legacy,
                content_type: None,
                status: 200,
                path: Some(c.path),
                method: Some(c.method),
                headers: c.headers,
                body: &body,
            },
        )
        .unwrap_or_else(|e| panic!("{} {}: {e}", c.method, c.path));
        let offline = Seen {
            method: out.method.unwrap(),
            path_and_query: out.path.unwrap(),
            headers: out.headers,
            body: out.body,
        };
        assert_same_request(&live, &offline, &format!("library, {} {}", c.method, c.path));
        let binary = offline_binary(&f.config_path, c, &body);
        assert_same_request(&live, &binary, &format!("binary, {} {}", c.method, c.path));
        f.shutdown().await;
    }
}

#[tokio::test]
async fn ficus_translate_prints_exactly_the_answer_the_client_gets() {
    for (status, answer) in [
        (200, "create_order.response.xml"),
        (500, "create_order.fault.xml"),
    ] {
        let (up, _) = legacy(status, "text/xml; charset=utf-8", fixture(answer)).await;
        let f = Ficus::start(&fixture_config(&up.url())).await;
        let a = send(
            &client(),
            post(
                &f.url("/api/orders"),
                "application/json",
                fixture("create_order.request.json"),
            ),
        )
        .await;
        let out = ficus::translate::offline::run(
            &f.config_path,
            &ficus::translate::offline::Input {
                route: "orders_create",
                direction: ficus::translate::Direction::Response,
                side: ficus::pipeline::context::Side::Legacy,
                content_type: Some("text/xml; charset=utf-8"),
                status,
                path: None,
                method: None,
                headers: &[],
                body: &fixture(answer),
            },
        )
        .unwrap();
        assert_eq!(out.status, Some(a.status.as_u16()), "{answer}");
        assert_eq!(
            out.headers.get("content-type"),
            a.headers.get("content-type"),
            "{answer}"
        );
        assert_eq!(out.body, a.body, "{answer}");
        f.shutdown().await;
    }
}

#[test]
fn ficus_translate_on_the_demo_config_builds_the_getorder_envelope() {
    // The command the issue quotes, on the demo config itself, with nothing on stdin.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args(["translate", "--config"])
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/demo.yaml"))
        .args(["--route", "orders", "--direction", "request", "--side", "legacy"])
        .args(["--path", "/api/orders/7"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let meta = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{meta}");
    assert!(meta.starts_with("POST /OrderService.asmx\n"), "{meta}");
    assert!(meta.contains("soapaction: \"urn:orders#GetOrder\"\n"), "{meta}");
    let body = String::from_utf8(out.stdout).unwrap();
    assert!(
        body.contains(r#"<GetOrder xmlns="urn:orders"><OrderId>7</OrderId></GetOrder>"#),
        "{body}"
    );
}

// ------------------------------------------------------------------ properties

mod props {
    use ficus::translate::xml::{json_to_xml, xml_to_json, XmlRead, XmlWrite};
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    /// The supported subset: objects whose keys are XML names, string leaves without
    /// surrounding whitespace, `null`, and arrays of at least two objects or strings.
    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            "[A-Za-z0-9&<>\"' éü€-]{0,12}".prop_map(|s| Value::String(s.trim().to_string())),
            Just(Value::Null),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        "[a-wA-W_][a-zA-Z0-9_-]{0,8}"
    }

    fn node() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::btree_map(key(), inner.clone(), 1..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
                prop::collection::btree_map(
                    key(),
                    prop::collection::vec(
                        prop::collection::btree_map(key(), leaf(), 1..3)
                            .prop_map(|m| Value::Object(m.into_iter().collect())),
                        2..4
                    )
                    .prop_map(Value::Array),
                    1..2
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn json_to_xml_to_json_is_the_identity_on_the_supported_subset(doc in prop::collection::btree_map(key(), node(), 1..4)) {
            let doc = Value::Object(doc.into_iter().collect());
            let xml = json_to_xml(&doc, &XmlWrite { root: Some("root".into()), namespaces: vec![], order: vec![] }).unwrap();
            let (root, back) = xml_to_json(&xml, &XmlRead::default()).unwrap();
            prop_assert_eq!(root, "root");
            prop_assert_eq!(back, doc, "{}", xml);
        }
    }
}
