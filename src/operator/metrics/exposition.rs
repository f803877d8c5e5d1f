//! The text exposition of the gauges, written by hand: label values interned once per pass and
//! series kept as ids, rendered byte-identical to the `prometheus` crate's `TextEncoder` (the
//! tests in `super` compare the two). As `prometheus::IntGaugeVec`s, the gauges of 2,000
//! namespaces held ~30 MB and every scrape copied all their series in `Registry::gather`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use prometheus::proto::{MetricFamily, MetricType};

use super::MetricValues;
use super::values::{Sink, emit};
use crate::operator::index::Evaluate;
use crate::operator::status::Observed;

/// A gauge family written from [`MetricValues`].
pub(super) struct Family {
    pub name: &'static str,
    pub help: &'static str,
    /// Label names sorted, as the text format of the `prometheus` crate writes them.
    pub labels: &'static [&'static str],
}

/// The gauge families, sorted by name as the exposition lists families.
pub(super) const FAMILIES: [Family; 13] = [
    Family {
        name: "pss_apiserver_version_unsupported",
        help: "1 when the API server is newer than the newest Pod Security policy version this build knows (its checks are evaluated as that version's)",
        labels: &["version"],
    },
    Family {
        name: "pss_blocked_workloads",
        help: "Workloads whose Pod template violates the enforce level in force: their next Pod is refused",
        labels: &["kind", "namespace", "profile"],
    },
    Family {
        name: "pss_namespace_conflict",
        help: "1 for a namespace selected by profiles of equal top priority",
        labels: &["namespace"],
    },
    Family {
        name: "pss_namespace_excluded",
        help: "1 for a namespace the operator leaves alone (system namespaces, --exclude-namespaces, its own)",
        labels: &["namespace"],
    },
    Family {
        name: "pss_namespace_exempt",
        help: "1 for a namespace the PodSecurity admission configuration exempts: none of its Pods is evaluated",
        labels: &["namespace"],
    },
    Family {
        name: "pss_namespace_level",
        help: "1 per written namespace and mode, labelled with the level and version in force",
        labels: &["level", "mode", "namespace", "profile", "version"],
    },
    Family {
        name: "pss_pod_violations",
        help: "Running Pods failing a check at the level in force of a mode in their namespace",
        labels: &["check", "mode", "namespace", "profile"],
    },
    Family {
        name: "pss_privileged_containers",
        help: "Containers of running Pods with securityContext.privileged=true, in every namespace",
        labels: &["namespace"],
    },
    Family {
        name: "pss_rollout_pending",
        help: "Pods blocking a WhenCompliant enforce rollout",
        labels: &["namespace", "profile"],
    },
    Family {
        name: "pss_unprotected_namespace",
        help: "1 for a namespace whose enforce level in force is privileged (labels and admission defaults), not exempt, and no Enforce-mode profile governs",
        labels: &["namespace"],
    },
    Family {
        name: "pss_violating_pods",
        help: "Running Pods that violate the level in force of a mode in their namespace",
        labels: &["mode", "namespace", "profile"],
    },
    Family {
        name: "pss_violating_workloads",
        help: "Workloads whose Pod template violates the level in force of a mode in their namespace",
        labels: &["kind", "mode", "namespace", "profile"],
    },
    Family {
        name: "pss_would_violate_pods",
        help: "Running Pods that would violate the level an Audit-mode profile declares for a mode (not in force)",
        labels: &["mode", "namespace", "profile"],
    },
];

/// The gauge series of one pass, compact and ready to write: label values are interned, and
/// series are sorted as `Registry::gather` sorts them.
#[derive(Default)]
pub struct Gauges {
    /// Every distinct label value, escaped for the text format, back to back: value `i` ends at
    /// `ends[i]`. Ids are ranks in unescaped byte order, so comparing ids orders series the way
    /// the `prometheus` crate compares label values.
    strings: String,
    ends: Vec<u32>,
    /// Per family of [`FAMILIES`]: `labels.len()` value ids per series, in label name order.
    ids: [Vec<u32>; FAMILIES.len()],
    values: [Vec<i32>; FAMILIES.len()],
    /// Length of the text exposition of these families, for the capacity of a render.
    pub(super) text_len: usize,
}

/// Builds [`Gauges`] from the series of a pass as they come ([`Sink`]): label values get
/// first-seen ids at once, ranked and the series sorted at the end.
#[derive(Default)]
pub(super) struct Builder {
    ids: HashMap<Arc<str>, u32>,
    strings: Vec<Arc<str>>,
    /// Per family: first-seen ids, `labels.len()` per series, in label name order.
    series: [Vec<u32>; FAMILIES.len()],
    values: [Vec<i32>; FAMILIES.len()],
}

impl Builder {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(id) = self.ids.get(s) {
            return *id;
        }
        let id = u32::try_from(self.strings.len()).expect("fewer than 2^32 label values");
        let s: Arc<str> = Arc::from(s);
        self.strings.push(Arc::clone(&s));
        self.ids.insert(s, id);
        id
    }

    /// A series of family `f`, its label values in the order of the family's label names.
    fn push<const W: usize>(&mut self, f: usize, labels: [&str; W], value: i32) {
        debug_assert_eq!(W, FAMILIES[f].labels.len(), "{}", FAMILIES[f].name);
        for label in labels {
            let id = self.id(label);
            self.series[f].push(id);
        }
        self.values[f].push(value);
    }

    pub(super) fn finish(self) -> Gauges {
        let Builder {
            ids,
            strings,
            series,
            values,
        } = self;
        drop(ids);
        let mut order: Vec<u32> = (0..strings.len())
            .map(|i| u32::try_from(i).expect("fewer than 2^32 label values"))
            .collect();
        order.sort_unstable_by(|&a, &b| strings[a as usize].cmp(&strings[b as usize]));
        let mut rank = vec![0; order.len()];
        let mut g = Gauges {
            strings: String::with_capacity(strings.iter().map(|s| s.len()).sum()),
            ends: Vec::with_capacity(order.len()),
            ..Gauges::default()
        };
        for (r, &i) in order.iter().enumerate() {
            rank[i as usize] = u32::try_from(r).expect("fewer than 2^32 label values");
            g.strings.push_str(&escape(&strings[i as usize], true));
            g.ends
                .push(u32::try_from(g.strings.len()).expect("label values under 4 GiB"));
        }
        drop((order, strings));
        for (f, (ids, values)) in series.into_iter().zip(values).enumerate() {
            g.set(f, ids, values, &rank);
        }
        g
    }
}

/// Each family's label values go in the order of its (sorted) label names.
impl Sink for Builder {
    fn reserve(&mut self, namespaces: usize, check_series: usize) {
        self.series[7].reserve(namespaces);
        self.values[7].reserve(namespaces);
        self.series[5].reserve(5 * 3 * namespaces);
        self.values[5].reserve(3 * namespaces);
        self.series[10].reserve(3 * 3 * namespaces);
        self.values[10].reserve(3 * namespaces);
        self.series[6].reserve(4 * check_series);
        self.values[6].reserve(check_series);
    }
    fn apiserver_version(&mut self, version: &str, unsupported: i32) {
        self.push(0, [version], unsupported);
    }
    fn blocked_workloads(&mut self, ns: &str, profile: &str, kind: &str, n: i32) {
        self.push(1, [kind, ns, profile], n);
    }
    fn conflicted(&mut self, ns: &str) {
        self.push(2, [ns], 1);
    }
    fn excluded(&mut self, ns: &str) {
        self.push(3, [ns], 1);
    }
    fn exempt(&mut self, ns: &str) {
        self.push(4, [ns], 1);
    }
    fn namespace_level(&mut self, ns: &str, profile: &str, mode: &str, level: &str, version: &str) {
        self.push(5, [level, mode, ns, profile, version], 1);
    }
    fn pod_violations(&mut self, ns: &str, profile: &str, mode: &str, check: &str, n: i32) {
        self.push(6, [check, mode, ns, profile], n);
    }
    fn privileged_containers(&mut self, ns: &str, n: i32) {
        self.push(7, [ns], n);
    }
    fn rollout_pending(&mut self, ns: &str, profile: &str, n: i32) {
        self.push(8, [ns, profile], n);
    }
    fn unprotected(&mut self, ns: &str) {
        self.push(9, [ns], 1);
    }
    fn violating_pods(&mut self, ns: &str, profile: &str, mode: &str, n: i32) {
        self.push(10, [mode, ns, profile], n);
    }
    fn violating_workloads(&mut self, ns: &str, profile: &str, mode: &str, kind: &str, n: i32) {
        self.push(11, [kind, mode, ns, profile], n);
    }
    fn would_violate_pods(&mut self, ns: &str, profile: &str, mode: &str, n: i32) {
        self.push(12, [mode, ns, profile], n);
    }
}

impl Gauges {
    /// The gauges of everything observed in one pass, built without [`MetricValues`].
    pub fn of<P: Evaluate>(obs: &Observed<'_, P>) -> Gauges {
        let mut builder = Builder::default();
        emit(obs, &mut builder);
        builder.finish()
    }

    /// How many series these are.
    pub fn series(&self) -> usize {
        self.values.iter().map(Vec::len).sum()
    }

    /// Sets family `f` to `ids` (first-seen, `labels.len()` per series) and `values`, sorted by
    /// label values. Of series with the same labels the last one counts, as it did when each was
    /// set on an `IntGaugeVec`.
    fn set(&mut self, f: usize, ids: Vec<u32>, values: Vec<i32>, rank: &[u32]) {
        let family = &FAMILIES[f];
        let w = family.labels.len();
        let (sorted_ids, sorted_values) = match w {
            1 => sorted::<1>(&ids, &values, rank),
            2 => sorted::<2>(&ids, &values, rank),
            3 => sorted::<3>(&ids, &values, rank),
            4 => sorted::<4>(&ids, &values, rank),
            5 => sorted::<5>(&ids, &values, rank),
            _ => unreachable!("{} has 1 to 5 labels", family.name),
        };
        drop((ids, values));
        if !sorted_values.is_empty() {
            self.text_len += header_len(family);
        }
        // `name{` + `label="` `",` per label + ` ` + value + `\n`, with `,` of the last label as `}`.
        let fixed =
            family.name.len() + 1 + family.labels.iter().map(|l| l.len() + 4).sum::<usize>() + 2;
        for (series, value) in sorted_ids.chunks_exact(w).zip(&sorted_values) {
            self.text_len += fixed
                + series
                    .iter()
                    .map(|&id| self.string(id).len())
                    .sum::<usize>()
                + decimal_len(*value);
        }
        self.ids[f] = sorted_ids;
        self.values[f] = sorted_values;
    }

    /// A label value, escaped.
    fn string(&self, id: u32) -> &str {
        let id = id as usize;
        let start = if id == 0 {
            0
        } else {
            self.ends[id - 1] as usize
        };
        &self.strings[start..self.ends[id] as usize]
    }

    /// Writes family `f` as the `prometheus` crate's `TextEncoder` does; nothing without series.
    /// Writes family `f` into `out`, calling `flush` after each line.
    pub fn write(
        &self,
        f: usize,
        out: &mut String,
        flush: &mut dyn FnMut(&mut String) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let family = &FAMILIES[f];
        let values = &self.values[f];
        if values.is_empty() {
            return Ok(());
        }
        write_header(family, out);
        for (ids, value) in self.ids[f].chunks_exact(family.labels.len()).zip(values) {
            out.push_str(family.name);
            let mut separator = '{';
            for (label, &id) in family.labels.iter().zip(ids) {
                out.push(separator);
                out.push_str(label);
                out.push_str("=\"");
                out.push_str(self.string(id));
                out.push('"');
                separator = ',';
            }
            // Integers print the same as the crate's `f64` values of `IntGauge`s.
            let _ = writeln!(out, "}} {value}");
            flush(out)?;
        }
        Ok(())
    }
}

/// Series of `W` labels (first-seen ids, flat) ranked, sorted by label values and deduplicated
/// (the last of equal labels kept), flat again.
fn sorted<const W: usize>(ids: &[u32], values: &[i32], rank: &[u32]) -> (Vec<u32>, Vec<i32>) {
    let mut series: Vec<([u32; W], i32)> = ids
        .chunks_exact(W)
        .zip(values)
        .map(|(labels, value)| {
            let labels: [u32; W] = labels.try_into().expect("W ids per series");
            (labels.map(|id| rank[id as usize]), *value)
        })
        .collect();
    // Stable: of equal labels, the last one set stays last.
    series.sort_by_key(|s| s.0);
    series.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 = later.1;
        }
        same
    });
    (
        series.iter().flat_map(|(labels, _)| *labels).collect(),
        series.iter().map(|(_, value)| *value).collect(),
    )
}

fn header_len(family: &Family) -> usize {
    "# HELP ".len()
        + family.name.len()
        + 1
        + escape(family.help, false).len()
        + 1
        + "# TYPE ".len()
        + family.name.len()
        + " gauge\n".len()
}

fn write_header(family: &Family, out: &mut String) {
    out.push_str("# HELP ");
    out.push_str(family.name);
    out.push(' ');
    out.push_str(&escape(family.help, false));
    out.push_str("\n# TYPE ");
    out.push_str(family.name);
    out.push_str(" gauge\n");
}

fn decimal_len(n: i32) -> usize {
    n.unsigned_abs().checked_ilog10().unwrap_or(0) as usize + 1 + usize::from(n < 0)
}

/// The text format's escaping: `\` and newline, and `"` in label values.
fn escape(s: &str, quote: bool) -> Cow<'_, str> {
    let special = |c: char| c == '\\' || c == '\n' || (quote && c == '"');
    if !s.contains(special) {
        return Cow::Borrowed(s);
    }
    let mut escaped = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            c if special(c) => {
                escaped.push('\\');
                escaped.push(c);
            }
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// Rough text length of a family of the registry, for the capacity of a render.
pub(super) fn estimated_len(mf: &MetricFamily) -> usize {
    let lines: usize = mf
        .get_metric()
        .iter()
        .map(|m| match mf.get_field_type() {
            MetricType::HISTOGRAM => m.get_histogram().get_bucket().len() + 3,
            _ => 1,
        })
        .sum();
    256 + lines * (mf.name().len() + 96)
}

impl From<&MetricValues> for Gauges {
    fn from(v: &MetricValues) -> Gauges {
        let mut builder = Builder::default();
        v.emit(&mut builder);
        builder.finish()
    }
}
