//! Translation throughput: XML -> JSON, and a 10-operation JSON mapping, at 1 KiB and 64 KiB.
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ficus::config::transform::DirectionConfig;
use ficus::translate::{Direction, DirectionPlan};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, StatusCode};

fn plan(yaml: &str) -> DirectionPlan {
    let d: DirectionConfig = serde_yaml_ng::from_str(yaml).unwrap();
    DirectionPlan::compile(&d, Direction::Response)
        .map_err(|e| format!("{e:?}"))
        .unwrap()
}

/// A legacy order list of about `size` bytes.
fn xml_orders(size: usize) -> String {
    let mut s = String::from("<?xml version=\"1.0\"?><Orders>");
    let mut i = 0;
    while s.len() < size - 20 {
        s.push_str(&format!(
            "<Order id=\"{i}\"><CUST_NO>C-{i}</CUST_NO><STATUS>S</STATUS><TOTAL_CENTS>{}</TOTAL_CENTS><CREATED>20240229143000</CREATED></Order>",
            i * 100 + 99
        ));
        i += 1;
    }
    s.push_str("</Orders>");
    s
}

fn json_orders(size: usize) -> String {
    let mut items = Vec::new();
    let mut len = 20;
    let mut i = 0;
    while len < size {
        let item = format!(
            r#"{{"CUST_NO":{i},"NAME":"Customer {i}","BIRTH_DT":"07/03/1981","STATUS":"A","BALANCE":{},"TAGS":"vip,eu","TMP":1,"VIP":"Y"}}"#,
            i * 37
        );
        len += item.len() + 1;
        items.push(item);
        i += 1;
    }
    format!(r#"{{"DATA":[{}]}}"#, items.join(","))
}

fn bench(c: &mut Criterion) {
    let xml = plan("content_types: [text/xml]\nops: [{ xml_to_json: { array_paths: [Order] } }]");
    // Ten operations, per element of the array.
    let mapping = plan(
        "ops:
  - unwrap: { key: DATA }
  - each:
      path: ''
      ops:
        - rename: { path: CUST_NO, to: id }
        - convert: { path: id, to: string }
        - rename: { path: NAME, to: name }
        - date: { path: BIRTH_DT, from: dd/MM/yyyy, to: yyyy-MM-dd }
        - map: { path: STATUS, values: { A: active, S: suspended } }
        - money: { path: BALANCE, to: decimal }
        - split: { path: TAGS, separator: ',' }
        - delete: { path: TMP }
        - convert: { path: VIP, to: bool }",
    );
    let mut g = c.benchmark_group("translate");
    for size in [1024usize, 64 * 1024] {
        let body = xml_orders(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("xml_to_json", size), &body, |b, body| {
            b.iter(|| {
                let mut h = HeaderMap::new();
                h.insert(CONTENT_TYPE, HeaderValue::from_static("text/xml"));
                xml.translate(Some(StatusCode::OK), &mut h, body.as_bytes())
                    .unwrap()
            })
        });
        let body = json_orders(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("json_10_ops", size), &body, |b, body| {
            b.iter(|| {
                let mut h = HeaderMap::new();
                h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                mapping
                    .translate(Some(StatusCode::OK), &mut h, body.as_bytes())
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
