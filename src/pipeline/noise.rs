//! Noise learning, as Diffy does it: for a sample of shadowed requests the serving side is asked
//! a second time, and the fields in which its two answers differ (timestamps, generated ids,
//! request-scoped tokens) are noise. A learned field stops counting as a mismatch between the
//! two sides, in the diff rate, the rollout's guard and the comparison metric, without anyone
//! writing an `ignore` rule for it.
//!
//! A field is learned from the first sampled pair in which it differs: its value is then known
//! not to be a function of the request. Fields are generalised (`items.3.ts` is learned as
//! `items.*.ts`), so one pair covers every element of an array. A learned field explains a
//! different value or type on the other side, never a field that one side lacks: volatility says
//! nothing about a missing field. Everything here runs in the shadow task, after the client has
//! its answer.

use std::collections::HashMap;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Serialize;

use super::diff::{field_key, DiffKind, FieldDiff};

/// Learned fields per route at most; a field past it is counted in `overflow`, not kept.
pub const MAX_FIELDS: usize = 256;
/// Longer paths are not kept (counted in `overflow`): they come from upstream bodies.
pub const MAX_PATH: usize = 256;

/// A route's learned noise. It outlives a reload that leaves the route's shadow unchanged.
#[derive(Default)]
pub struct Learned {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Pairs of answers with the same status, compared.
    samples: u64,
    /// Pairs whose statuses differed: not compared, since a different status says nothing
    /// about volatile fields.
    status_differed: u64,
    /// Second calls that failed, timed out or had a body past the bound.
    failed: u64,
    /// Second calls not made because the shadow's slots were taken.
    dropped: u64,
    /// Fields not learned because of [`MAX_FIELDS`] or [`MAX_PATH`].
    overflow: u64,
    /// Differences between the two sides that learned noise explained.
    suppressed: u64,
    /// Comparisons that matched only because learned noise explained all their differences.
    cleared: u64,
    fields: HashMap<String, Field>,
}

struct Field {
    differed: u64,
    /// `samples` when the field was learned: `of` counts the pairs from then on.
    first_sample: u64,
    since: SystemTime,
}

/// One learned field, as `GET /admin/noise` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldReport {
    pub path: String,
    /// Sampled pairs in which it differed...
    pub differed: u64,
    /// ...of the pairs compared since it was first seen differing (that one included).
    pub of: u64,
    pub since: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub route: String,
    pub sample_percent: f64,
    pub samples: u64,
    pub fields: Vec<FieldReport>,
    pub max_fields: usize,
    pub overflow: u64,
    pub status_differed: u64,
    pub failed: u64,
    pub dropped: u64,
    pub suppressed: u64,
    pub cleared_comparisons: u64,
}

/// Whether a second call to the serving side is made for this request: the sampled share, in
/// basis points. Decided on the request path, so it is one random number and nothing more.
pub fn sampled(sample_bp: u32) -> bool {
    sample_bp > 0 && fastrand::u32(0..10_000) < sample_bp
}

/// `5.0` (percent) as basis points.
pub fn basis_points(percent: f64) -> u32 {
    (percent * 100.0).round().clamp(0.0, 10_000.0) as u32
}

impl Learned {
    /// One sampled pair of the serving side's answers, with the same status: `diffs` are where
    /// they differ (after `ignore`). The status itself never becomes noise.
    pub fn learn(&self, diffs: &[FieldDiff]) {
        let now = SystemTime::now();
        // A field differs once per pair however many array elements it differs in. Keys are
        // made outside the lock, each once: a body can hold 100,000 leaves.
        let mut seen = std::collections::HashSet::new();
        let keys: Vec<String> = diffs
            .iter()
            .filter(|d| d.path != "status")
            .map(|d| field_key(&d.path))
            .filter(|k| seen.insert(k.clone()))
            .collect();
        let mut st = self.state.lock();
        st.samples += 1;
        let sample = st.samples;
        for key in keys {
            if let Some(f) = st.fields.get_mut(&key) {
                f.differed += 1;
            } else if st.fields.len() >= MAX_FIELDS || key.len() > MAX_PATH {
                st.overflow += 1;
            } else {
                st.fields.insert(
                    key,
                    Field {
                        differed: 1,
                        first_sample: sample,
                        since: now,
                    },
                );
            }
        }
    }

    pub fn status_differed(&self) {
        self.state.lock().status_differed += 1;
    }

    pub fn failed(&self) {
        self.state.lock().failed += 1;
    }

    pub fn dropped(&self) {
        self.state.lock().dropped += 1;
    }

    /// `diffs` between the two sides without those learned noise explains; the second value
    /// says how many went.
    pub fn filter(&self, diffs: Vec<FieldDiff>) -> (Vec<FieldDiff>, usize) {
        let mut st = self.state.lock();
        if st.fields.is_empty() || diffs.is_empty() {
            return (diffs, 0);
        }
        let before = diffs.len();
        let kept: Vec<FieldDiff> = diffs.into_iter().filter(|d| !explains(&st.fields, d)).collect();
        let gone = before - kept.len();
        st.suppressed += gone as u64;
        if gone > 0 && kept.is_empty() {
            st.cleared += 1;
        }
        (kept, gone)
    }

    pub fn report(&self, route: &str, sample_percent: f64) -> Report {
        let st = self.state.lock();
        let mut fields: Vec<FieldReport> = st
            .fields
            .iter()
            .map(|(path, f)| FieldReport {
                path: path.clone(),
                differed: f.differed,
                of: st.samples + 1 - f.first_sample,
                since: humantime::format_rfc3339_millis(f.since).to_string(),
            })
            .collect();
        fields.sort_by(|a, b| b.differed.cmp(&a.differed).then_with(|| a.path.cmp(&b.path)));
        Report {
            route: route.to_string(),
            sample_percent,
            samples: st.samples,
            fields,
            max_fields: MAX_FIELDS,
            overflow: st.overflow,
            status_differed: st.status_differed,
            failed: st.failed,
            dropped: st.dropped,
            suppressed: st.suppressed,
            cleared_comparisons: st.cleared,
        }
    }
}

/// Whether a learned field is, or lies above, the field `d` names, and `d` is a difference a
/// volatile value explains.
fn explains(fields: &HashMap<String, Field>, d: &FieldDiff) -> bool {
    if d.path == "status" || !matches!(d.kind, DiffKind::ValueDiffers | DiffKind::TypeChanged) {
        return false;
    }
    let key = field_key(&d.path);
    if fields.contains_key(&key) {
        return true;
    }
    key.match_indices('.')
        .any(|(i, _)| fields.contains_key(&key[..i]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::diff::{diff_bodies, DiffRules};

    fn pair(a: &str, b: &str) -> Vec<FieldDiff> {
        diff_bodies(
            "application/json",
            a.as_bytes(),
            b.as_bytes(),
            &DiffRules::default(),
        )
    }

    fn paths(d: &[FieldDiff]) -> Vec<&str> {
        d.iter().map(|d| d.path.as_str()).collect()
    }

    #[test]
    fn a_field_that_differs_between_two_answers_is_learned_after_one_pair_for_every_element() {
        let l = Learned::default();
        l.learn(&pair(
            r#"{"id":1,"items":[{"ts":"a","n":1},{"ts":"b","n":2}]}"#,
            r#"{"id":1,"items":[{"ts":"c","n":1},{"ts":"d","n":2}]}"#,
        ));
        let r = l.report("r", 100.0);
        assert_eq!(r.samples, 1);
        assert_eq!(r.fields.len(), 1, "{r:?}");
        assert_eq!(
            (r.fields[0].path.as_str(), r.fields[0].differed, r.fields[0].of),
            ("items.*.ts", 1, 1)
        );
        // Against the other side: the learned field goes, a stable one that differs stays.
        let (kept, gone) = l.filter(pair(
            r#"{"id":1,"items":[{"ts":"a","n":1},{"ts":"b","n":2},{"ts":"e","n":3}]}"#,
            r#"{"id":2,"items":[{"ts":"x","n":1},{"ts":"y","n":2},{"ts":"z","n":3}]}"#,
        ));
        assert_eq!(paths(&kept), ["$.id"]);
        assert_eq!(gone, 3);
    }

    #[test]
    fn a_stable_field_is_never_learned_and_keeps_counting() {
        let l = Learned::default();
        for i in 0..1000 {
            let a = format!(r#"{{"price":10,"at":"{i}a"}}"#);
            let b = format!(r#"{{"price":10,"at":"{i}b"}}"#);
            l.learn(&pair(&a, &b));
        }
        let r = l.report("r", 100.0);
        assert_eq!(r.samples, 1000);
        assert_eq!(
            r.fields
                .iter()
                .map(|f| (f.path.as_str(), f.differed, f.of))
                .collect::<Vec<_>>(),
            [("at", 1000, 1000)]
        );
        let (kept, _) = l.filter(pair(r#"{"price":10,"at":"x"}"#, r#"{"price":11,"at":"y"}"#));
        assert_eq!(paths(&kept), ["$.price"]);
    }

    #[test]
    fn noise_explains_other_values_but_not_a_missing_field_or_the_status() {
        let l = Learned::default();
        l.learn(&pair(
            r#"{"at":"1","meta":{"x":1}}"#,
            r#"{"at":"2","meta":{"x":2}}"#,
        ));
        let (kept, _) = l.filter(pair(
            r#"{"meta":{"x":1,"y":1}}"#,
            r#"{"at":3,"meta":{"x":"s","y":2}}"#,
        ));
        assert_eq!(paths(&kept), ["$.at", "$.meta.y"], "{kept:?}");
        let status = FieldDiff {
            path: "status".into(),
            primary: Some("200".into()),
            shadow: Some("500".into()),
            kind: DiffKind::ValueDiffers,
        };
        l.learn(std::slice::from_ref(&status));
        let (kept, gone) = l.filter(vec![status]);
        assert_eq!((kept.len(), gone), (1, 0));
    }

    #[test]
    fn learned_fields_are_capped_and_the_overflow_counted() {
        let l = Learned::default();
        let a: serde_json::Map<String, serde_json::Value> = (0..MAX_FIELDS + 10)
            .map(|i| (format!("f{i}"), 1.into()))
            .collect();
        let b: serde_json::Map<String, serde_json::Value> = (0..MAX_FIELDS + 10)
            .map(|i| (format!("f{i}"), 2.into()))
            .collect();
        let d = pair(
            &serde_json::Value::Object(a).to_string(),
            &serde_json::Value::Object(b).to_string(),
        );
        l.learn(&d);
        let r = l.report("r", 5.0);
        assert_eq!(r.fields.len(), MAX_FIELDS);
        assert_eq!(r.overflow, 10);
        let long = format!("{{\"{}\":1}}", "k".repeat(MAX_PATH + 1));
        let long2 = long.replace(":1", ":2");
        l.learn(&pair(&long, &long2));
        assert_eq!(l.report("r", 5.0).overflow, 11);
    }

    #[test]
    fn sampling_takes_the_configured_share() {
        assert!(!sampled(0));
        assert!((0..1000).all(|_| sampled(10_000)));
        let hits = (0..20_000).filter(|_| sampled(basis_points(5.0))).count();
        assert!((700..1300).contains(&hits), "{hits}");
    }
}
