//! The text exposition of the gauges, written by hand: label values interned once per pass and
//! series kept as ids, rendered byte-identical to the `prometheus` crate's `TextEncoder` (the
//! tests in `super` compare the two). As `prometheus::IntGaugeVec`s, the gauges of 2,000
//! namespaces held ~30 MB and every scrape copied all their series in `Registry::gather`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;

use prometheus::proto::{MetricFamily, MetricType};

use super::MetricValues;

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
pub(super) struct Gauges {
    /// Every distinct label value, escaped for the text format, back to back: value `i` ends at
    /// `ends[i]`. Ids are ranks in unescaped byte order, so comparing ids orders series the way
    /// the `prometheus` crate compares label values.
    strings: String,
    ends: Vec<u32>,
    /// Per family of [`FAMILIES`]: `labels.len()` value ids per series, in label name order.
    ids: [Vec<u32>; FAMILIES.len()],
    values: [Vec<i32>; FAMILIES.len()],
    /// Length of the text exposition of these families, for the capacity of a render.
    pub text_len: usize,
}

/// Label values to ids, in first-seen order.
#[derive(Default)]
struct LabelValueIds<'a> {
    ids: HashMap<&'a str, u32>,
    strings: Vec<&'a str>,
}

impl<'a> LabelValueIds<'a> {
    fn id(&mut self, s: &'a str) -> u32 {
        *self.ids.entry(s).or_insert_with(|| {
            self.strings.push(s);
            u32::try_from(self.strings.len() - 1).expect("fewer than 2^32 label values")
        })
    }

    /// The series of one family, with first-seen ids.
    fn series<const W: usize>(
        &mut self,
        series: impl Iterator<Item = ([&'a str; W], i32)>,
    ) -> Vec<([u32; W], i32)> {
        series
            .map(|(labels, value)| (labels.map(|l| self.id(l)), value))
            .collect()
    }
}

impl Gauges {
    pub fn new(v: &MetricValues) -> Gauges {
        let mut interner = LabelValueIds::default();
        // Each family's label values in the order of its (sorted) label names.
        let unsupported = interner.series(
            v.apiserver_version
                .iter()
                .map(|(version, n)| ([&**version], *n)),
        );
        let excluded = interner.series(v.excluded.iter().map(|ns| ([&**ns], 1)));
        let exempt = interner.series(v.exempt.iter().map(|ns| ([&**ns], 1)));
        let would = interner.series(
            v.would_violate_pods
                .iter()
                .map(|([ns, profile, mode], n)| ([mode, ns, profile].map(|l| &**l), *n)),
        );
        let blocked = interner.series(
            v.blocked_workloads
                .iter()
                .map(|([ns, profile, kind], n)| ([kind, ns, profile].map(|l| &**l), *n)),
        );
        let conflict = interner.series(v.conflicted.iter().map(|ns| ([&**ns], 1)));
        let level = interner.series(v.namespace_level.iter().map(
            |[ns, profile, mode, level, version]| {
                ([level, mode, ns, profile, version].map(|l| &**l), 1)
            },
        ));
        let violations = interner.series(
            v.pod_violations
                .iter()
                .map(|([ns, profile, mode, check], n)| {
                    ([check, mode, ns, profile].map(|l| &**l), *n)
                }),
        );
        let privileged =
            interner.series(v.privileged_containers.iter().map(|(ns, n)| ([&**ns], *n)));
        let pending = interner.series(
            v.rollout_pending
                .iter()
                .map(|([ns, profile], n)| ([&**ns, &**profile], *n)),
        );
        let unprotected = interner.series(v.unprotected.iter().map(|ns| ([&**ns], 1)));
        let violating = interner.series(
            v.violating_pods
                .iter()
                .map(|([ns, profile, mode], n)| ([mode, ns, profile].map(|l| &**l), *n)),
        );
        let violating_workloads = interner.series(
            v.violating_workloads
                .iter()
                .map(|([ns, profile, mode, kind], n)| {
                    ([kind, mode, ns, profile].map(|l| &**l), *n)
                }),
        );

        let mut order: Vec<u32> = (0..interner.strings.len())
            .map(|i| u32::try_from(i).expect("fewer than 2^32 label values"))
            .collect();
        order.sort_unstable_by_key(|&i| interner.strings[i as usize]);
        let mut rank = vec![0; order.len()];
        let mut g = Gauges {
            strings: String::with_capacity(interner.strings.iter().map(|s| s.len()).sum()),
            ends: Vec::with_capacity(order.len()),
            ..Gauges::default()
        };
        for (r, &i) in order.iter().enumerate() {
            rank[i as usize] = u32::try_from(r).expect("fewer than 2^32 label values");
            g.strings
                .push_str(&escape(interner.strings[i as usize], true));
            g.ends
                .push(u32::try_from(g.strings.len()).expect("label values under 4 GiB"));
        }
        g.set(0, unsupported, &rank);
        g.set(1, blocked, &rank);
        g.set(2, conflict, &rank);
        g.set(3, excluded, &rank);
        g.set(4, exempt, &rank);
        g.set(5, level, &rank);
        g.set(6, violations, &rank);
        g.set(7, privileged, &rank);
        g.set(8, pending, &rank);
        g.set(9, unprotected, &rank);
        g.set(10, violating, &rank);
        g.set(11, violating_workloads, &rank);
        g.set(12, would, &rank);
        g
    }

    /// Sets family `f` to `series` (first-seen ids), sorted by label values. Of series with the
    /// same labels the last one counts, as it did when each was set on an `IntGaugeVec`.
    fn set<const W: usize>(&mut self, f: usize, mut series: Vec<([u32; W], i32)>, rank: &[u32]) {
        for (ids, _) in &mut series {
            *ids = ids.map(|id| rank[id as usize]);
        }
        series.sort_by_key(|s| s.0);
        series.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = later.1;
            }
            same
        });
        let family = &FAMILIES[f];
        if !series.is_empty() {
            self.text_len += header_len(family);
        }
        // `name{` + `label="` `",` per label + ` ` + value + `\n`, with `,` of the last label as `}`.
        let fixed =
            family.name.len() + 1 + family.labels.iter().map(|l| l.len() + 4).sum::<usize>() + 2;
        for (ids, value) in &series {
            self.text_len += fixed
                + ids.iter().map(|&id| self.string(id).len()).sum::<usize>()
                + decimal_len(*value);
        }
        self.ids[f] = series.iter().flat_map(|(ids, _)| *ids).collect();
        self.values[f] = series.iter().map(|(_, value)| *value).collect();
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
