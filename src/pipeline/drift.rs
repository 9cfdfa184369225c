//! Field-level drift: per route, over a sliding window of one-minute buckets, which fields
//! mismatch between the two sides (after `ignore` and learned noise), in how many comparisons,
//! and how (missing on one side, type changed, value differs). Recorded in the shadow task;
//! read by `GET /admin/drift` and, for the top fields only, by `/metrics`.
//!
//! Field names come from upstream bodies, so every count is bounded: fields per bucket
//! ([`MAX_FIELDS`]), path length ([`MAX_PATH`]), and metric series per route ([`TOP_METRIC`]
//! fields, each with at most four kinds). Series of fields that leave the top are not
//! exported any more: the metric is rendered from the window at each scrape.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;

use super::diff::{field_key, DiffKind, FieldDiff};

pub const BUCKET_SECONDS: u64 = 60;
pub const BUCKETS: usize = 10;
pub const WINDOW_SECONDS: u64 = BUCKET_SECONDS * BUCKETS as u64;
/// Distinct fields one bucket keeps; further ones are counted in `overflow`.
pub const MAX_FIELDS: usize = 512;
/// Longer paths count in `overflow`.
pub const MAX_PATH: usize = 256;
/// Fields per route exported as `ficus_shadow_drift_field_mismatches`.
pub const TOP_METRIC: usize = 10;
/// Fields per route `GET /admin/drift` lists (the most mismatching first).
pub const TOP_REPORT: usize = 200;

pub const METRIC: &str = "ficus_shadow_drift_field_mismatches";

pub struct Drift {
    start: Instant,
    buckets: Mutex<VecDeque<Bucket>>,
}

impl Default for Drift {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            buckets: Mutex::new(VecDeque::with_capacity(BUCKETS)),
        }
    }
}

#[derive(Default)]
struct Bucket {
    minute: u64,
    comparisons: u64,
    mismatched: u64,
    overflow: u64,
    fields: HashMap<String, Counts>,
}

/// Comparisons in which a field mismatched, and by kind (a field may mismatch in two ways in
/// one comparison when array elements differ differently).
#[derive(Default, Clone, Copy)]
struct Counts {
    mismatches: u64,
    kinds: [u64; 4],
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Kinds {
    pub missing_on_primary: u64,
    pub missing_on_shadow: u64,
    pub type_changed: u64,
    pub value_differs: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldReport {
    pub path: String,
    pub mismatches: u64,
    /// Of the window's comparisons.
    pub rate: f64,
    pub kinds: Kinds,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub route: String,
    pub window_seconds: u64,
    pub comparisons: u64,
    pub mismatched: u64,
    /// The most mismatching fields first, at most [`TOP_REPORT`].
    pub fields: Vec<FieldReport>,
    /// Fields in the window beyond those listed.
    pub more_fields: usize,
    /// Field mismatches not kept because of the bounds.
    pub overflow: u64,
}

impl Drift {
    fn minute(&self) -> u64 {
        self.start.elapsed().as_secs() / BUCKET_SECONDS
    }

    /// One completed comparison; `diffs` are what still counts after `ignore` and noise.
    pub fn record(&self, diffs: &[FieldDiff]) {
        self.record_at(self.minute(), diffs);
    }

    fn record_at(&self, minute: u64, diffs: &[FieldDiff]) {
        // Keys and kinds first, outside the lock; one count per field and kind per comparison.
        let mut unique = std::collections::HashSet::with_capacity(diffs.len());
        let seen: Vec<(String, DiffKind)> = diffs
            .iter()
            .map(|d| (field_key(&d.path), d.kind))
            .filter(|k| unique.insert(k.clone()))
            .collect();
        let mut buckets = self.buckets.lock();
        if buckets.back().is_none_or(|b| b.minute != minute) {
            if buckets.len() == BUCKETS {
                buckets.pop_front();
            }
            buckets.push_back(Bucket {
                minute,
                ..Bucket::default()
            });
        }
        let Some(b) = buckets.back_mut() else {
            return;
        };
        b.comparisons += 1;
        if diffs.is_empty() {
            return;
        }
        b.mismatched += 1;
        let mut counted: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for (key, kind) in &seen {
            let full = b.fields.len() >= MAX_FIELDS;
            let c = match b.fields.get_mut(key.as_str()) {
                Some(c) => c,
                None if full || key.len() > MAX_PATH => {
                    b.overflow += 1;
                    continue;
                }
                None => b.fields.entry(key.clone()).or_default(),
            };
            c.kinds[kind.index()] += 1;
            if counted.insert(key.as_str()) {
                c.mismatches += 1;
            }
        }
    }

    /// The window's totals and every field's counts, merged over its buckets.
    fn window_at(&self, minute: u64) -> (u64, u64, u64, HashMap<String, Counts>) {
        let buckets = self.buckets.lock();
        let (mut comparisons, mut mismatched, mut overflow) = (0, 0, 0);
        let mut fields: HashMap<String, Counts> = HashMap::new();
        for b in buckets.iter().filter(|b| b.minute + (BUCKETS as u64) > minute) {
            comparisons += b.comparisons;
            mismatched += b.mismatched;
            overflow += b.overflow;
            for (k, c) in &b.fields {
                let m = fields.entry(k.clone()).or_default();
                m.mismatches += c.mismatches;
                for (i, n) in c.kinds.iter().enumerate() {
                    m.kinds[i] += n;
                }
            }
        }
        (comparisons, mismatched, overflow, fields)
    }

    fn top(fields: HashMap<String, Counts>) -> Vec<(String, Counts)> {
        let mut all: Vec<(String, Counts)> = fields.into_iter().collect();
        all.sort_by(|a, b| b.1.mismatches.cmp(&a.1.mismatches).then_with(|| a.0.cmp(&b.0)));
        all
    }

    pub fn report(&self, route: &str) -> Report {
        self.report_at(route, self.minute())
    }

    fn report_at(&self, route: &str, minute: u64) -> Report {
        let (comparisons, mismatched, overflow, fields) = self.window_at(minute);
        let all = Self::top(fields);
        let more_fields = all.len().saturating_sub(TOP_REPORT);
        let fields = all
            .into_iter()
            .take(TOP_REPORT)
            .map(|(path, c)| FieldReport {
                path,
                mismatches: c.mismatches,
                rate: if comparisons == 0 {
                    0.0
                } else {
                    c.mismatches as f64 / comparisons as f64
                },
                kinds: Kinds {
                    missing_on_primary: c.kinds[DiffKind::MissingOnPrimary.index()],
                    missing_on_shadow: c.kinds[DiffKind::MissingOnShadow.index()],
                    type_changed: c.kinds[DiffKind::TypeChanged.index()],
                    value_differs: c.kinds[DiffKind::ValueDiffers.index()],
                },
            })
            .collect();
        Report {
            route: route.to_string(),
            window_seconds: WINDOW_SECONDS,
            comparisons,
            mismatched,
            fields,
            more_fields,
            overflow,
        }
    }

    /// This route's series of the drift gauge: the top fields' window counts by kind.
    fn render_at(&self, route: &str, minute: u64, out: &mut String) {
        let (_, _, _, fields) = self.window_at(minute);
        for (field, c) in Self::top(fields).into_iter().take(TOP_METRIC) {
            for kind in DiffKind::ALL {
                let n = c.kinds[kind.index()];
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "{METRIC}{{route=\"{}\",field=\"{}\",kind=\"{}\"}} {n}",
                        label(route),
                        label(&field),
                        kind.label()
                    );
                }
            }
        }
    }
}

/// `ficus_shadow_drift_field_mismatches` for every shadowed route, in the Prometheus text
/// format, appended to `/metrics`.
pub fn prometheus<'a>(routes: impl Iterator<Item = (&'a str, &'a Drift)>) -> String {
    let mut series = String::new();
    for (route, drift) in routes {
        drift.render_at(route, drift.minute(), &mut series);
    }
    if series.is_empty() {
        return series;
    }
    format!(
        "# HELP {METRIC} Shadow comparisons in the last {WINDOW_SECONDS}s in which the field mismatched, by kind (top {TOP_METRIC} fields per route).\n# TYPE {METRIC} gauge\n{series}"
    )
}

/// A label value in the text format: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::diff::{diff_bodies, DiffRules};

    fn diffs(a: &str, b: &str) -> Vec<FieldDiff> {
        diff_bodies(
            "application/json",
            a.as_bytes(),
            b.as_bytes(),
            &DiffRules::default(),
        )
    }

    #[test]
    fn fields_are_counted_once_per_comparison_with_their_kinds() {
        let d = Drift::default();
        let one = diffs(
            r#"{"items":[{"p":1},{"p":2}],"gone":1,"t":"x"}"#,
            r#"{"items":[{"p":3},{"p":"4"}],"t":"x","new":1}"#,
        );
        d.record_at(0, &one);
        d.record_at(0, &diffs(r#"{"t":"x"}"#, r#"{"t":"x"}"#));
        d.record_at(1, &diffs(r#"{"items":[{"p":1}]}"#, r#"{"items":[{"p":9}]}"#));
        let r = d.report_at("orders", 1);
        assert_eq!((r.comparisons, r.mismatched), (3, 2));
        let f: Vec<(&str, u64, [u64; 4])> = r
            .fields
            .iter()
            .map(|f| {
                let k = &f.kinds;
                (
                    f.path.as_str(),
                    f.mismatches,
                    [
                        k.missing_on_primary,
                        k.missing_on_shadow,
                        k.type_changed,
                        k.value_differs,
                    ],
                )
            })
            .collect();
        assert_eq!(
            f,
            [
                ("items.*.p", 2, [0, 0, 1, 2]),
                ("gone", 1, [0, 1, 0, 0]),
                ("new", 1, [1, 0, 0, 0]),
            ]
        );
        assert!((r.fields[0].rate - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn the_window_slides_and_old_minutes_drop_out() {
        let d = Drift::default();
        d.record_at(0, &diffs(r#"{"a":1}"#, r#"{"a":2}"#));
        d.record_at(5, &diffs(r#"{"b":1}"#, r#"{"b":2}"#));
        let r = d.report_at("r", 9);
        assert_eq!(r.comparisons, 2);
        let r = d.report_at("r", 10);
        assert_eq!(
            r.comparisons, 1,
            "minute 0 is out of a window ending in minute 10"
        );
        assert_eq!(r.fields[0].path, "b");
        // Recording far later keeps at most BUCKETS buckets.
        for m in 20..40 {
            d.record_at(m, &[]);
        }
        assert_eq!(d.buckets.lock().len(), BUCKETS);
        assert_eq!(d.report_at("r", 39).comparisons, 10);
    }

    #[test]
    fn the_metric_holds_only_the_top_fields_and_escapes_labels() {
        let d = Drift::default();
        // 30 fields, field fN mismatching in N+1 comparisons.
        for n in 0..30u64 {
            for _ in 0..=n {
                let a = format!(r#"{{"f{n}":1}}"#);
                let b = format!(r#"{{"f{n}":2}}"#);
                d.record_at(0, &diffs(&a, &b));
            }
        }
        d.record_at(0, &diffs(r#"{"q\"x":1}"#, r#"{"q\"x":2}"#));
        let text = prometheus([("orders", &d)].into_iter());
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with(METRIC)).collect();
        assert_eq!(series.len(), TOP_METRIC, "{text}");
        assert!(series[0].starts_with(
            "ficus_shadow_drift_field_mismatches{route=\"orders\",field=\"f29\",kind=\"value_differs\"} 30"
        ));
        assert!(!text.contains("field=\"f19\""), "{text}");
        assert_eq!(label("q\"x\\\n"), "q\\\"x\\\\\\n");
        assert!(prometheus(std::iter::empty()).is_empty());
    }

    #[test]
    fn fields_per_bucket_are_capped() {
        let d = Drift::default();
        let a: serde_json::Map<String, serde_json::Value> =
            (0..MAX_FIELDS + 5).map(|i| (format!("f{i}"), 1.into())).collect();
        let b: serde_json::Map<String, serde_json::Value> =
            (0..MAX_FIELDS + 5).map(|i| (format!("f{i}"), 2.into())).collect();
        d.record_at(
            0,
            &diffs(
                &serde_json::Value::Object(a).to_string(),
                &serde_json::Value::Object(b).to_string(),
            ),
        );
        let r = d.report_at("r", 0);
        assert_eq!(r.fields.len() + r.more_fields, MAX_FIELDS);
        assert_eq!(r.overflow, 5);
    }
}
