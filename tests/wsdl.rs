//! `ficus import wsdl` end to end: each WSDL in tests/fixtures/wsdl is imported, the output is
//! compiled as `ficus check` compiles it, and then run against an in-process SOAP backend that
//! implements the WSDL (it checks the SOAP version, the action, the content type and the
//! operation element, and answers a proper envelope), so JSON goes in and comes back out with
//! arrays and converted types. The demo's legacy service publishes its WSDL, and its import
//! serves the demo's order.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::{json, Value};
use support::*;

use ficus::import::wsdl::{import_file, import_text, Options};

const BIN: &str = env!("CARGO_BIN_EXE_ficus");
const SOAP11_ENV: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const SOAP12_ENV: &str = "http://www.w3.org/2003/05/soap-envelope";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/wsdl")
        .join(name)
}

fn opts(prefix: &str) -> Options {
    Options {
        prefix: prefix.into(),
        ..Options::default()
    }
}

/// Compiles `yaml` exactly as `ficus check` does, and fails the test with its problems.
fn assert_checks(yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("imported.yaml");
    std::fs::write(&path, yaml).unwrap();
    let result = ficus::config::ConfigSource::File(path)
        .read()
        .and_then(|t| ficus::config::compile::standalone(&t));
    if let Err(e) = result {
        let problems: Vec<String> = e.0.iter().map(|p| p.to_string()).collect();
        panic!(
            "ficus check refuses the import:\n{}\n\n{yaml}",
            problems.join("\n")
        );
    }
}

/// The import with its placeholders pointed at this test: listener `main` and the admin API on
/// ephemeral ports, and the upstream's endpoint replaced by the backend.
fn runnable(yaml: &str, endpoint: &str, backend: &str) -> String {
    let y = yaml
        .replace(
            "  - name: public\n    bind: 127.0.0.1:8080\n",
            "  - name: main\n    bind: '127.0.0.1:0'\n",
        )
        .replace(
            "admin:\n  bind: 127.0.0.1:9901\n",
            "admin:\n  bind: '127.0.0.1:0'\nreload: { watch: false }\nlog: { level: warn, access_log: false }\n",
        )
        .replace(&format!("['{endpoint}']"), &format!("['{backend}']"));
    assert!(y.contains(backend) && y.contains("name: main"), "{y}");
    y
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Soap {
    V11,
    V12,
}

/// One operation the backend implements: the answer's body content from the request's
/// operation content (as ficus's own SOAP reader sees it).
#[derive(Clone)]
struct Op {
    action: &'static str,
    element: &'static str,
    namespace: &'static str,
    answer: fn(&Value) -> String,
}

/// A SOAP backend implementing a WSDL; it records every envelope it receives.
async fn soap_backend(
    version: Soap,
    path: &'static str,
    ops: Vec<Op>,
) -> (Upstream, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let ops = Arc::new(ops);
    let up = Upstream::start(move |req: Request<Incoming>| {
        let (log, ops) = (log.clone(), ops.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
            log.lock().unwrap().push(body.clone());
            let header = |n: &str| {
                parts
                    .headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let (env_ns, ctype) = match version {
                Soap::V11 => (SOAP11_ENV, "text/xml; charset=utf-8"),
                Soap::V12 => (SOAP12_ENV, "application/soap+xml; charset=utf-8"),
            };
            let envelope = |inner: String| {
                format!(
                    "<?xml version=\"1.0\" encoding=\"utf-8\"?><soap:Envelope xmlns:soap=\"{env_ns}\" \
                     xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soap:Body>{inner}</soap:Body></soap:Envelope>"
                )
            };
            let reply = |status: u16, inner: String| {
                let mut r = Response::new(full(Bytes::from(envelope(inner))));
                *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                r.headers_mut().insert("content-type", ctype.parse().unwrap());
                r
            };
            let fault = |why: String| {
                let inner = match version {
                    Soap::V11 => format!("<soap:Fault><faultcode>soap:Server</faultcode><faultstring>{why}</faultstring></soap:Fault>"),
                    Soap::V12 => format!(
                        "<soap:Fault><soap:Code><soap:Value>soap:Receiver</soap:Value></soap:Code>\
                         <soap:Reason><soap:Text xml:lang=\"en\">{why}</soap:Text></soap:Reason></soap:Fault>"
                    ),
                };
                reply(500, inner)
            };
            // What the WSDL's binding promises, checked the way a strict SOAP stack would.
            if parts.method != http::Method::POST || parts.uri.path() != path {
                return fault(format!("expected POST {path}, got {} {}", parts.method, parts.uri));
            }
            let ct = header("content-type");
            let action = match version {
                Soap::V11 => {
                    if !ct.starts_with("text/xml") {
                        return fault(format!("SOAP 1.1 wants text/xml, got `{ct}`"));
                    }
                    header("soapaction").trim_matches('"').to_string()
                }
                Soap::V12 => {
                    if !ct.starts_with("application/soap+xml") || !header("soapaction").is_empty() {
                        return fault(format!("SOAP 1.2 wants application/soap+xml and no SOAPAction, got `{ct}`"));
                    }
                    ct.split("action=\"")
                        .nth(1)
                        .and_then(|a| a.split('"').next())
                        .unwrap_or("")
                        .to_string()
                }
            };
            let Some(op) = ops.iter().find(|o| o.action == action) else {
                return fault(format!("no operation has the action `{action}`"));
            };
            let other = if version == Soap::V11 { SOAP12_ENV } else { SOAP11_ENV };
            if !body.contains(env_ns) || body.contains(other) {
                return fault(format!("not a SOAP {version:?} envelope: {body}"));
            }
            let opening = format!("<{} xmlns=\"{}\"", op.element, op.namespace);
            if !body.contains(&opening) {
                return fault(format!("expected the operation element {opening}>: {body}"));
            }
            match ficus::translate::soap::unwrap(&body, &[], false) {
                Ok(ficus::translate::soap::Unwrapped::Body(v)) => reply(200, (op.answer)(&v)),
                Ok(ficus::translate::soap::Unwrapped::Fault(_)) => fault("a fault as a request".into()),
                Err(e) => fault(format!("malformed envelope: {e}")),
            }
        }
    })
    .await;
    (up, seen)
}

async fn post_json(f: &Ficus, path: &str, body: Value) -> Answer {
    send(
        &client(),
        Request::post(f.url(path))
            .header("content-type", "application/json")
            .body(full(body.to_string()))
            .unwrap(),
    )
    .await
}

fn text_of(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

// ---------------------------------------------------------------- the demo's order service

fn order_answer(req: &Value) -> String {
    let id = text_of(req, "OrderId");
    format!(
        "<GetOrderResponse xmlns=\"urn:orders\"><Order><ORDER_NO>{id}</ORDER_NO><CUST_NO>C-{id}</CUST_NO>\
         <STATUS>S</STATUS><TOTAL_CENTS>4498</TOTAL_CENTS><CREATED>20240229143000</CREATED>\
         <SERVED_BY>legacy</SERVED_BY><Lines><Line><SKU>A-1</SKU><QTY>2</QTY></Line></Lines></Order>\
         </GetOrderResponse>"
    )
}

#[tokio::test]
async fn demo_order_wsdl_imports_checks_and_round_trips_json_through_soap_1_1() {
    let yaml = import_file(&fixture("orders.wsdl"), &opts("/api/v1")).unwrap();
    assert!(yaml.contains("- soap_wrap: { version: '1.1', action: 'urn:orders#GetOrder', body_element: 'GetOrder', namespace: 'urn:orders' }"), "{yaml}");
    assert!(
        yaml.contains("- soap_unwrap: { array_paths: ['Order.Lines.Line'] }"),
        "{yaml}"
    );
    assert!(!yaml.contains("Not mapped"), "{yaml}");
    assert_checks(&yaml);

    let (up, seen) = soap_backend(
        Soap::V11,
        "/OrderService.asmx",
        vec![Op {
            action: "urn:orders#GetOrder",
            element: "GetOrder",
            namespace: "urn:orders",
            answer: order_answer,
        }],
    )
    .await;
    let f = Ficus::start(&runnable(&yaml, "http://127.0.0.1:18001", &up.url())).await;
    let a = post_json(&f, "/api/v1/GetOrder", json!({"OrderId": 7})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(
        a.json(),
        json!({"Order": {"ORDER_NO": 7, "CUST_NO": "C-7", "STATUS": "S", "TOTAL_CENTS": 4498,
               "CREATED": "20240229143000", "SERVED_BY": "legacy",
               "Lines": {"Line": [{"SKU": "A-1", "QTY": 2}]}}})
    );
    let sent = seen.lock().unwrap()[0].clone();
    assert!(
        sent.contains(
            r#"<soap:Body><GetOrder xmlns="urn:orders"><OrderId>7</OrderId></GetOrder></soap:Body>"#
        ),
        "{sent}"
    );
    f.shutdown().await;
}

// ---------------------------------------------------------------- nested types, arrays, optional

fn product(sku: &str, tags: &[&str], dimensions: bool, in_stock: bool) -> String {
    let tags = if tags.is_empty() {
        String::new()
    } else {
        let t: String = tags.iter().map(|t| format!("<ct:Tag>{t}</ct:Tag>")).collect();
        format!("<ct:Tags>{t}</ct:Tags>")
    };
    let dims = if dimensions {
        "<ct:Dimensions><ct:WidthMm>120</ct:WidthMm><ct:HeightMm>300</ct:HeightMm></ct:Dimensions>"
    } else {
        ""
    };
    format!(
        "<ct:Sku>{sku}</ct:Sku><ct:Name>Lamp {sku}</ct:Name><ct:Price>12.50</ct:Price>\
         <ct:InStock>{in_stock}</ct:InStock>{tags}{dims}<ct:Updated>2024-02-29T14:30:00Z</ct:Updated>"
    )
}

fn search_answer(req: &Value) -> String {
    let products = if text_of(req, "Query") == "one" {
        format!(
            "<Product xmlns:ct=\"urn:catalog:types\">{}</Product>",
            product("L-1", &["desk"], true, true)
        )
    } else {
        format!(
            "<Product xmlns:ct=\"urn:catalog:types\">{}</Product><Product xmlns:ct=\"urn:catalog:types\">{}</Product>",
            product("L-1", &["desk", "led"], true, true),
            product("L-2", &[], false, false)
        )
    };
    let total = if text_of(req, "Query") == "one" { 1 } else { 2 };
    format!(
        "<SearchProductsResponse xmlns=\"urn:catalog\"><Result><Total>{total}</Total>{products}</Result></SearchProductsResponse>"
    )
}

fn get_product_answer(req: &Value) -> String {
    format!(
        "<GetProductResponse xmlns=\"urn:catalog\"><Product xmlns:ct=\"urn:catalog:types\">{}</Product></GetProductResponse>",
        product(&text_of(req, "Sku"), &["desk"], false, true)
    )
}

fn product_json(sku: &str, tags: &[&str], dimensions: bool, in_stock: bool) -> Value {
    let mut p = json!({"Sku": sku, "Name": format!("Lamp {sku}"), "Price": 12.5, "InStock": in_stock,
                       "Updated": "2024-02-29T14:30:00Z"});
    if !tags.is_empty() {
        p["Tags"] = json!({"Tag": tags});
    }
    if dimensions {
        p["Dimensions"] = json!({"WidthMm": 120, "HeightMm": 300});
    }
    p
}

#[tokio::test]
async fn catalog_wsdl_with_an_imported_schema_round_trips_nested_arrays_and_optional_elements() {
    let yaml = import_file(&fixture("catalog.wsdl"), &opts("/api")).unwrap();
    // The product types come from catalog-types.xsd (xs:import): their arrays and conversions.
    assert!(
        yaml.contains("- soap_unwrap: { array_paths: ['Result.Product', 'Result.Product.Tags.Tag'] }"),
        "{yaml}"
    );
    for op in [
        "- convert: { path: 'Result.Product.*.Price', to: number }",
        "- convert: { path: 'Result.Product.*.InStock', to: bool }",
        "- convert: { path: 'Result.Product.*.Dimensions.WidthMm', to: number }",
        "- convert: { path: 'Result.Product.*.Dimensions.WeightKg', to: number }",
        "- convert: { path: 'Product.Price', to: number }",
    ] {
        assert!(yaml.contains(op), "{op}:\n{yaml}");
    }
    assert!(
        yaml.contains("order: ['Query', 'Categories', 'PriceRange', 'MaxResults', 'Min', 'Max']"),
        "{yaml}"
    );
    assert!(
        yaml.contains("# Not mapped: xs:dateTime fields stay strings"),
        "{yaml}"
    );
    assert_checks(&yaml);

    let (up, seen) = soap_backend(
        Soap::V11,
        "/soap/catalog",
        vec![
            Op {
                action: "http://example.com/catalog/SearchProducts",
                element: "SearchProducts",
                namespace: "urn:catalog",
                answer: search_answer,
            },
            Op {
                action: "http://example.com/catalog/GetProduct",
                element: "GetProduct",
                namespace: "urn:catalog",
                answer: get_product_answer,
            },
        ],
    )
    .await;
    let f = Ficus::start(&runnable(&yaml, "http://catalog.legacy.internal:8080", &up.url())).await;

    // Fields in any JSON order reach the service in the schema's sequence; an array becomes
    // repeated elements.
    let a = post_json(
        &f,
        "/api/SearchProducts",
        json!({"MaxResults": 10, "PriceRange": {"Max": 99.5, "Min": 5}, "Query": "lamp",
               "Categories": {"Category": ["home", "office"]}}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.json(),
        json!({"Result": {"Total": 2, "Product": [
            product_json("L-1", &["desk", "led"], true, true),
            product_json("L-2", &[], false, false)]}})
    );
    let sent = seen.lock().unwrap()[0].clone();
    assert!(
        sent.contains(
            "<SearchProducts xmlns=\"urn:catalog\"><Query>lamp</Query><Categories><Category>home</Category>\
             <Category>office</Category></Categories><PriceRange><Min>5</Min><Max>99.5</Max></PriceRange>\
             <MaxResults>10</MaxResults></SearchProducts>"
        ),
        "{sent}"
    );

    // One product and one tag are still arrays: the schema says they repeat.
    let a = post_json(&f, "/api/SearchProducts", json!({"Query": "one"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.json(),
        json!({"Result": {"Total": 1, "Product": [product_json("L-1", &["desk"], true, true)]}})
    );

    // The other operation: a single product is an object.
    let a = post_json(&f, "/api/GetProduct", json!({"Sku": "L-9"})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.json(),
        json!({"Product": product_json("L-9", &["desk"], false, true)})
    );
    f.shutdown().await;
}

// ---------------------------------------------------------------- SOAP 1.2

fn forecast_answer(req: &Value) -> String {
    let days: u32 = text_of(req, "Days").parse().unwrap_or(0);
    let day: String = (1..=days)
        .map(|d| {
            format!(
                "<Day><Date>2026-12-0{d}</Date><High>{}.5</High><Low>-1</Low><Rain>{}</Rain></Day>",
                5 + d,
                d % 2 == 0
            )
        })
        .collect();
    format!(
        "<w:GetForecastResponse xmlns:w=\"http://example.org/weather\"><w:Forecast><w:City>{}</w:City>{day}</w:Forecast></w:GetForecastResponse>",
        text_of(req, "City")
    )
}

#[tokio::test]
async fn soap_1_2_wsdl_round_trips_with_the_action_in_the_content_type() {
    let yaml = import_file(&fixture("weather.wsdl"), &opts("/weather")).unwrap();
    assert!(
        yaml.contains("version: '1.2', action: 'http://example.org/weather/GetForecast'"),
        "{yaml}"
    );
    assert!(yaml.contains("order: ['City', 'Days', 'Metric'] }"), "{yaml}");
    assert!(yaml.contains("array_paths: ['Forecast.Day']"), "{yaml}");
    assert_checks(&yaml);

    let (up, seen) = soap_backend(
        Soap::V12,
        "/ws/weather",
        vec![Op {
            action: "http://example.org/weather/GetForecast",
            element: "GetForecast",
            namespace: "http://example.org/weather",
            answer: forecast_answer,
        }],
    )
    .await;
    let f = Ficus::start(&runnable(&yaml, "http://weather.legacy.internal", &up.url())).await;
    let a = post_json(
        &f,
        "/weather/GetForecast",
        json!({"Metric": true, "Days": 2, "City": "Lyon"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.json(),
        json!({"Forecast": {"City": "Lyon", "Day": [
            {"Date": "2026-12-01", "High": 6.5, "Low": -1, "Rain": false},
            {"Date": "2026-12-02", "High": 7.5, "Low": -1, "Rain": true}]}})
    );
    let sent = seen.lock().unwrap()[0].clone();
    assert!(
        sent.contains("<GetForecast xmlns=\"http://example.org/weather\"><City>Lyon</City><Days>2</Days><Metric>true</Metric></GetForecast>"),
        "{sent}"
    );
    let a = post_json(&f, "/weather/GetForecast", json!({"City": "Oslo", "Days": 1})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.json()["Forecast"]["Day"],
        json!([{"Date": "2026-12-01", "High": 6.5, "Low": -1, "Rain": false}])
    );
    f.shutdown().await;
}

// ---------------------------------------------------------------- the binary and its errors

#[test]
fn the_binary_prints_a_config_that_ficus_check_accepts_and_fails_clearly_on_bad_input() {
    let out = Command::new(BIN)
        .args(["import", "wsdl"])
        .arg(fixture("catalog.wsdl"))
        .args([
            "--operation",
            "GetProduct",
            "--prefix",
            "/v2",
            "--upstream",
            "catalog",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(
        yaml.contains("match: { path: '/v2/GetProduct', methods: [POST] }"),
        "{yaml}"
    );
    assert!(
        yaml.contains("upstream: catalog") && !yaml.contains("SearchProducts"),
        "{yaml}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let check = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}\n{yaml}",
        String::from_utf8_lossy(&check.stdout)
    );

    let fails = |args: &[&str], file: &Path, says: &str| {
        let out = Command::new(BIN)
            .args(["import", "wsdl"])
            .arg(file)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && out.stdout.is_empty(), "{err}");
        assert!(
            err.contains(&file.display().to_string()) && err.contains(says),
            "{err}"
        );
    };
    fails(&[], &fixture("missing.wsdl"), "cannot read it");
    fails(
        &[],
        &fixture("catalog-types.xsd"),
        "not a WSDL 1.1 document: the root element is `{http://www.w3.org/2001/XMLSchema}schema`",
    );
    fails(
        &["--operation", "GetPrice"],
        &fixture("catalog.wsdl"),
        "no operation named `GetPrice` in the SOAP binding (it has: SearchProducts, GetProduct)",
    );
}

#[test]
fn local_schemas_are_read_inside_the_wsdl_directory_only_and_urls_are_never_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("svc");
    std::fs::create_dir(&inner).unwrap();
    let wsdl = |schema_location: &str| {
        std::fs::read_to_string(fixture("catalog.wsdl")).unwrap().replace(
            "schemaLocation=\"catalog-types.xsd\"",
            &format!("schemaLocation=\"{schema_location}\""),
        )
    };
    std::fs::copy(fixture("catalog-types.xsd"), dir.path().join("outside.xsd")).unwrap();
    std::fs::write(inner.join("a.wsdl"), wsdl("../outside.xsd")).unwrap();
    let e = import_file(&inner.join("a.wsdl"), &Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("a.wsdl: schema `../outside.xsd`") && e.contains("is outside the WSDL's directory"),
        "{e}"
    );

    std::fs::write(inner.join("b.wsdl"), wsdl("http://127.0.0.1:9/types.xsd")).unwrap();
    let yaml = import_file(&inner.join("b.wsdl"), &Options::default()).unwrap();
    assert!(
        yaml.contains("# Not mapped: schema `http://127.0.0.1:9/types.xsd` is a URL: it is not fetched"),
        "{yaml}"
    );
    assert!(
        yaml.contains("# Not mapped: the type `Product` of `Product` is not declared"),
        "{yaml}"
    );
    assert_checks(&yaml);
}

#[test]
fn an_included_schema_without_a_namespace_takes_the_including_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("xsd")).unwrap();
    // A chameleon include in a subdirectory: its types join urn:catalog, where catalog.wsdl
    // looks for them.
    let types = std::fs::read_to_string(fixture("catalog-types.xsd"))
        .unwrap()
        .replace(" targetNamespace=\"urn:catalog:types\"", "")
        .replace("xmlns:ct=\"urn:catalog:types\"", "xmlns:ct=\"urn:catalog\"");
    std::fs::write(dir.path().join("xsd/types.xsd"), types).unwrap();
    let wsdl = std::fs::read_to_string(fixture("catalog.wsdl"))
        .unwrap()
        .replace(
            "<xsd:import namespace=\"urn:catalog:types\" schemaLocation=\"catalog-types.xsd\"/>",
            "<xsd:include schemaLocation=\"xsd/types.xsd\"/>",
        )
        .replace("type=\"ct:Product\"", "type=\"cat:Product\"");
    std::fs::write(dir.path().join("catalog.wsdl"), wsdl).unwrap();
    let yaml = import_file(&dir.path().join("catalog.wsdl"), &Options::default()).unwrap();
    assert!(
        yaml.contains("- soap_unwrap: { array_paths: ['Product.Tags.Tag'] }"),
        "{yaml}"
    );
    assert!(
        yaml.contains("- convert: { path: 'Product.Dimensions.WidthMm', to: number }"),
        "{yaml}"
    );
    assert!(!yaml.contains("is not declared"), "{yaml}");
    assert_checks(&yaml);
}

// ---------------------------------------------------------------- the demo publishes its WSDL

#[tokio::test]
async fn the_demo_publishes_its_wsdl_and_its_import_serves_the_demo_order() {
    let legacy = ficus::demo::spawn_backend("127.0.0.1:0".parse().unwrap(), ficus::demo::Flavor::Legacy)
        .await
        .unwrap();
    let wsdl = get(&format!("http://{legacy}/OrderService.asmx?wsdl")).await;
    assert_eq!(wsdl.status, 200);
    assert!(wsdl.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/xml"));
    let yaml = import_text(
        &wsdl.text(),
        Path::new("OrderService.asmx?wsdl"),
        None,
        &Options::default(),
    )
    .unwrap();
    // The published address is the one the backend is bound to.
    let endpoint = format!("http://{legacy}");
    assert!(yaml.contains(&format!("endpoints: ['{endpoint}']")), "{yaml}");
    assert_checks(&yaml);

    let f = Ficus::start(&runnable(&yaml, &endpoint, &endpoint)).await;
    let a = post_json(&f, "/api/GetOrder", json!({"OrderId": 7})).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let order = &a.json()["Order"];
    assert_eq!(order["ORDER_NO"], 7);
    assert_eq!(order["TOTAL_CENTS"], 4498);
    assert_eq!(order["Lines"]["Line"], json!([{"SKU": "A-1", "QTY": 2}]));
    // The demo's Fault for an unknown order: a Client fault, so a 400 problem.
    let a = post_json(&f, "/api/GetOrder", json!({"OrderId": 404})).await;
    a.assert_problem(400, "soap-fault");
    f.shutdown().await;
}

// ---------------------------------------------------------------- hostile and unusual schemas

/// A one-operation document/literal WSDL around `schema`, which declares `Op` and `OpResponse`
/// in urn:t (prefix `tns`).
fn wsdl_around(schema: &str) -> String {
    format!(
        r#"<?xml version="1.0"?>
<definitions xmlns="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"
  xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:tns="urn:t" targetNamespace="urn:t">
  <types><xs:schema targetNamespace="urn:t" elementFormDefault="qualified">{schema}</xs:schema></types>
  <message name="In"><part name="p" element="tns:Op"/></message>
  <message name="Out"><part name="p" element="tns:OpResponse"/></message>
  <portType name="PT"><operation name="Op"><input message="tns:In"/><output message="tns:Out"/></operation></portType>
  <binding name="B" type="tns:PT"><soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <operation name="Op"><soap:operation soapAction="urn:t#Op"/>
      <input><soap:body use="literal"/></input><output><soap:body use="literal"/></output></operation></binding>
  <service name="S"><port name="P" binding="tns:B"><soap:address location="http://legacy.example:8080/svc"/></port></service>
</definitions>"#
    )
}

/// Imports `schema` in-process (a stack overflow would abort the test binary, a loop would
/// hang it), checks the config as `ficus check` does, and returns it.
fn import_hostile(schema: &str) -> String {
    let yaml = import_text(
        &wsdl_around(schema),
        Path::new("hostile.wsdl"),
        None,
        &Options::default(),
    )
    .unwrap();
    assert_checks(&yaml);
    yaml
}

/// `needle` is a `# Not mapped:` comment above the operation's route.
fn noted_above_route(yaml: &str, needle: &str) {
    let routes = yaml.split("routes:\n").nth(1).unwrap();
    let at = routes
        .find(&format!("# Not mapped: {needle}"))
        .unwrap_or_else(|| panic!("`{needle}` is not noted above the route:\n{yaml}"));
    assert!(at < routes.find("- name: op").unwrap(), "{yaml}");
}

const EMPTY_OP: &str =
    r#"<xs:element name="Op"><xs:complexType><xs:sequence/></xs:complexType></xs:element>"#;

#[test]
fn an_element_referring_to_itself_is_typed_down_to_its_first_repetition() {
    let yaml = import_hostile(
        r#"
        <xs:element name="Op"><xs:complexType><xs:sequence>
          <xs:element name="Id" type="xs:int"/><xs:element ref="tns:Op" minOccurs="0"/>
        </xs:sequence></xs:complexType></xs:element>
        <xs:element name="OpResponse"><xs:complexType><xs:sequence><xs:element ref="tns:A"/></xs:sequence></xs:complexType></xs:element>
        <xs:element name="A"><xs:complexType><xs:sequence>
          <xs:element name="V" type="xs:int"/><xs:element ref="tns:A" minOccurs="0" maxOccurs="unbounded"/>
        </xs:sequence></xs:complexType></xs:element>"#,
    );
    noted_above_route(&yaml, "the element `Op` contains itself");
    noted_above_route(&yaml, "the element `A` contains itself");
    assert!(yaml.contains("array_paths: ['A.A']"), "{yaml}");
    assert!(yaml.contains("- convert: { path: 'A.V', to: number }"), "{yaml}");
}

#[test]
fn a_simple_type_derived_from_itself_is_mapped_as_a_string() {
    let yaml = import_hostile(&format!(
        r#"{EMPTY_OP}
        <xs:element name="OpResponse"><xs:complexType><xs:sequence>
          <xs:element name="Direct" type="tns:S"/><xs:element name="Round" type="tns:T"/>
          <xs:element name="Count" type="tns:N"/>
        </xs:sequence></xs:complexType></xs:element>
        <xs:simpleType name="S"><xs:restriction base="tns:S"/></xs:simpleType>
        <xs:simpleType name="T"><xs:restriction base="tns:U"/></xs:simpleType>
        <xs:simpleType name="U"><xs:restriction base="tns:T"/></xs:simpleType>
        <xs:simpleType name="N"><xs:restriction base="xs:int"/></xs:simpleType>"#
    ));
    noted_above_route(&yaml, "the type `S` contains itself");
    noted_above_route(&yaml, "the type `T` contains itself");
    assert!(!yaml.contains("'Direct'") && !yaml.contains("'Round'"), "{yaml}");
    assert!(
        yaml.contains("- convert: { path: 'Count', to: number }"),
        "{yaml}"
    );
}

#[test]
fn a_group_using_itself_directly_or_through_another_stops_at_the_repetition() {
    let yaml = import_hostile(&format!(
        r#"{EMPTY_OP}
        <xs:element name="OpResponse"><xs:complexType><xs:sequence>
          <xs:group ref="tns:G"/><xs:group ref="tns:H1"/>
        </xs:sequence></xs:complexType></xs:element>
        <xs:group name="G"><xs:sequence>
          <xs:element name="Gv" type="xs:int"/><xs:group ref="tns:G" minOccurs="0"/>
        </xs:sequence></xs:group>
        <xs:group name="H1"><xs:sequence><xs:element name="H1v" type="xs:boolean"/><xs:group ref="tns:H2"/></xs:sequence></xs:group>
        <xs:group name="H2"><xs:sequence><xs:element name="H2v" type="xs:int"/><xs:group ref="tns:H1"/></xs:sequence></xs:group>"#
    ));
    noted_above_route(&yaml, "the group `G` contains itself");
    noted_above_route(&yaml, "the group `H1` contains itself");
    assert!(yaml.contains("- convert: { path: 'Gv', to: number }"), "{yaml}");
    assert!(yaml.contains("- convert: { path: 'H1v', to: bool }"), "{yaml}");
    assert!(yaml.contains("- convert: { path: 'H2v', to: number }"), "{yaml}");
}

#[test]
fn a_wide_schema_that_multiplies_out_stops_at_the_field_cap() {
    // 8 fields a level, 30 levels of distinct types: 8^30 elements if expanded.
    let mut schema = format!(r#"{EMPTY_OP}<xs:element name="OpResponse" type="tns:T0"/>"#);
    for level in 0..30 {
        schema.push_str(&format!(r#"<xs:complexType name="T{level}"><xs:sequence>"#));
        for f in 0..8 {
            schema.push_str(&format!(
                r#"<xs:element name="F{f}" type="tns:T{}" maxOccurs="2"/>"#,
                level + 1
            ));
        }
        schema.push_str("</xs:sequence></xs:complexType>");
    }
    schema.push_str(
        r#"<xs:complexType name="T30"><xs:sequence><xs:element name="V" type="xs:int"/></xs:sequence></xs:complexType>"#,
    );
    let started = std::time::Instant::now();
    let yaml = import_hostile(&schema);
    noted_above_route(
        &yaml,
        &format!(
            "the schema expands to more than {} elements: mapping stopped",
            ficus::import::wsdl::MAX_FIELDS
        ),
    );
    // What was mapped before the cap is kept.
    assert!(yaml.contains("'F0.F0.F0'"), "{yaml}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn groups_of_groups_that_map_nothing_stop_at_the_step_cap() {
    // No element at all, so the field cap never trips: 8^30 group visits if walked.
    let mut schema = format!(
        r#"{EMPTY_OP}<xs:element name="OpResponse"><xs:complexType><xs:sequence><xs:group ref="tns:G0"/></xs:sequence></xs:complexType></xs:element>"#
    );
    for level in 0..30 {
        schema.push_str(&format!(r#"<xs:group name="G{level}"><xs:sequence>"#));
        for _ in 0..8 {
            schema.push_str(&format!(r#"<xs:group ref="tns:G{}"/>"#, level + 1));
        }
        schema.push_str("</xs:sequence></xs:group>");
    }
    schema.push_str(r#"<xs:group name="G30"><xs:sequence/></xs:group>"#);
    let yaml = import_hostile(&schema);
    noted_above_route(
        &yaml,
        &format!(
            "the schema takes more than {} steps to expand",
            ficus::import::wsdl::MAX_STEPS
        ),
    );
}

#[test]
fn a_long_chain_of_distinct_types_stops_at_the_depth_cap() {
    let mut schema = format!(r#"{EMPTY_OP}<xs:element name="OpResponse" type="tns:T0"/>"#);
    for level in 0..2000 {
        schema.push_str(&format!(
            r#"<xs:complexType name="T{level}"><xs:sequence><xs:element name="E{level}" type="tns:T{}"/></xs:sequence></xs:complexType>"#,
            level + 1
        ));
    }
    schema.push_str(r#"<xs:simpleType name="T2000"><xs:restriction base="xs:int"/></xs:simpleType>"#);
    let yaml = import_hostile(&schema);
    let routes = yaml.split("routes:\n").nth(1).unwrap();
    assert!(
        routes.contains("is nested too deeply (more than")
            && routes.contains("schema components): below it nothing is typed"),
        "{routes}"
    );
    assert!(!yaml.contains("to: number"), "{yaml}");
}

#[test]
fn a_wsdl_or_schema_file_over_the_size_cap_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.wsdl");
    // Sparse: the cap is checked before the content is read.
    std::fs::File::create(&big)
        .unwrap()
        .set_len(ficus::import::wsdl::MAX_FILE_BYTES + 1)
        .unwrap();
    let out = Command::new(BIN)
        .args(["import", "wsdl"])
        .arg(&big)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.stdout.is_empty(), "{err}");
    assert!(
        err.contains(&big.display().to_string()) && err.contains("larger than 16 MiB: refused"),
        "{err}"
    );

    let xsd = dir.path().join("huge.xsd");
    std::fs::File::create(&xsd)
        .unwrap()
        .set_len(ficus::import::wsdl::MAX_FILE_BYTES + 1)
        .unwrap();
    let wsdl = std::fs::read_to_string(fixture("catalog.wsdl")).unwrap().replace(
        "schemaLocation=\"catalog-types.xsd\"",
        "schemaLocation=\"huge.xsd\"",
    );
    std::fs::write(dir.path().join("c.wsdl"), wsdl).unwrap();
    let e = import_file(&dir.path().join("c.wsdl"), &Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("c.wsdl: schema `huge.xsd`") && e.contains("huge.xsd is larger than 16 MiB: refused"),
        "{e}"
    );
}
