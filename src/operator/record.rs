//! The ledger kept on each governed namespace, in one annotation ([`ANNOTATION`]): what the
//! operator applied there (labels and values, under which profile and generation, what the
//! profiles declared), the values the namespace had before the operator first took each label
//! over, and digests of what it announced by Event. It is written in the same server-side apply
//! as the labels, so it can never say something the labels were not; what survives a restart,
//! a crash or a failover is therefore what the next leader compares the labels it finds with
//! (drift made while no operator ran), what `deletionPolicy: Remove` restores, and what keeps
//! announcements from being posted twice. It also marks the namespace as governed for the
//! optional admission guard (`config/guard/`).
//!
//! Pure: [`Record::encode`] and [`Record::decode`]. The annotation is input like any other: a
//! corrupt, truncated, oversized, foreign or hand-edited value is refused with a reason that
//! names what is wrong, and the caller treats the namespace as having no ledger.
//!
//! The format (compact JSON, label keys without the `pod-security.kubernetes.io/` prefix, the
//! profile always the second key so that the guard's CEL can show it):
//!
//! ```json
//! {"v":1,"profile":"apps","generation":3,
//!  "labels":{"enforce":"baseline","enforce-version":"latest"},
//!  "prior":{"enforce":"restricted","enforce-version":null},
//!  "announced":{"pending":"9f0c3e6a1b2d4c5e"}}
//! ```
//!
//! `declared` appears when the profiles declared something else than the labels (a stricter
//! value kept under `allowStricter`); `"held":true` while a `WhenCompliant` rollout holds
//! `enforce` back (the labels do not carry the declaration yet). In `prior`, `null` means the
//! label was absent.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::desired::{Labels, Prior};
use super::interned;
use crate::pss::level::labels::PREFIX as PSA_PREFIX;

/// The annotation holding the record.
pub const ANNOTATION: &str = "pss-operator.io/applied";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// The longest annotation value read. A valid record is at most ~2 KiB (six labels of at most
/// 63 characters, three maps of them, a profile name of at most 253 characters); anything
/// longer was not written by the operator.
pub const MAX_LEN: usize = 4096;

/// The six PSA label names, without their prefix.
const SUFFIXES: [&str; 6] = [
    "enforce",
    "enforce-version",
    "audit",
    "audit-version",
    "warn",
    "warn-version",
];

/// What the operator applied to one namespace (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The governing profile the labels were applied for (the first, if several tie).
    pub profile: String,
    /// That profile's `metadata.generation` when the labels were applied.
    pub generation: Option<i64>,
    /// The PSA labels applied, full keys. Label sets are [interned], shared with the plans and
    /// the ledger.
    pub labels: Arc<Labels>,
    /// What the profiles declared then; `None` while a `WhenCompliant` rollout holds `enforce`.
    pub declared: Option<Arc<Labels>>,
    /// Per label the operator applied: the value the namespace had before the operator first
    /// took it over (`None`: absent, or set by the operator before it kept a ledger).
    pub prior: Arc<Prior>,
    pub announced: Announced,
}

/// Digests of the states last announced by Event, so a restart does not announce them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Announced {
    /// `RolloutPending`: the target and the blocking Pods.
    pub pending: Option<Digest>,
    /// `ProfileConflict`: the tied profiles.
    pub conflict: Option<Digest>,
    /// `PodSecurityBlocked`: the blocked workloads (`Kind/name`).
    pub blocked: Option<Digest>,
}

impl Announced {
    pub fn is_empty(&self) -> bool {
        *self == Announced::default()
    }
}

/// A stable 64-bit digest (FNV-1a) of a list of strings. Not cryptographic: it only tells
/// whether a state is the one last announced; rewriting it by hand can at worst hide or repeat
/// an Event (the guard refuses such edits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub u64);

impl Digest {
    pub fn of<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Digest {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut h = OFFSET;
        for item in items {
            for b in item.as_ref().bytes().chain([0x1f]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(PRIME);
            }
        }
        Digest(h)
    }

    fn parse(s: &str) -> Option<Digest> {
        (s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| u64::from_str_radix(s, 16).ok().map(Digest))
            .flatten()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why an annotation value is not a record; the text says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError(String);

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RecordError {}

fn error(text: impl Into<String>) -> RecordError {
    RecordError(text.into())
}

/// The JSON as written: short label keys, optional parts left out.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    v: u32,
    profile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<i64>,
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    declared: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "is_false")]
    held: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    prior: BTreeMap<String, Option<String>>,
    #[serde(default, skip_serializing_if = "WireAnnounced::is_empty")]
    announced: WireAnnounced,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WireAnnounced {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    conflict: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blocked: Option<String>,
}

impl WireAnnounced {
    fn is_empty(&self) -> bool {
        self.pending.is_none() && self.conflict.is_none() && self.blocked.is_none()
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn short(key: &str) -> &str {
    key.strip_prefix(PSA_PREFIX).unwrap_or(key)
}

fn shorten<V: Clone>(map: &BTreeMap<String, V>) -> BTreeMap<String, V> {
    map.iter()
        .map(|(k, v)| (short(k).to_owned(), v.clone()))
        .collect()
}

/// Full keys from short ones; refuses anything but the six PSA labels.
fn lengthen<V>(field: &str, map: BTreeMap<String, V>) -> Result<BTreeMap<String, V>, RecordError> {
    map.into_iter()
        .map(|(k, v)| {
            if SUFFIXES.contains(&k.as_str()) {
                Ok((format!("{PSA_PREFIX}{k}"), v))
            } else {
                Err(error(format!(
                    "{field}: {k:?} is not a pod-security.kubernetes.io label (one of {})",
                    SUFFIXES.join(", ")
                )))
            }
        })
        .collect()
}

/// A Kubernetes label value: at most 63 characters, alphanumerics with `-`, `_`, `.` inside.
fn check_value(field: &str, key: &str, value: &str) -> Result<(), RecordError> {
    let bytes = value.as_bytes();
    let ok = bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
        && bytes.first().is_none_or(u8::is_ascii_alphanumeric)
        && bytes.last().is_none_or(u8::is_ascii_alphanumeric);
    if ok {
        Ok(())
    } else {
        Err(error(format!(
            "{field}.{}: {:?} is not a label value",
            short(key),
            truncate(value)
        )))
    }
}

/// A DNS subdomain, as profile names are.
fn check_profile(name: &str) -> Result<(), RecordError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 253
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(b))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if ok {
        Ok(())
    } else {
        Err(error(format!(
            "profile: {:?} is not a profile name",
            truncate(name)
        )))
    }
}

/// At most 40 characters of a value, for messages.
fn truncate(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

fn digest(field: &str, s: Option<String>) -> Result<Option<Digest>, RecordError> {
    s.map(|s| {
        Digest::parse(&s).ok_or_else(|| {
            error(format!(
                "announced.{field}: {:?} is not a digest (16 lowercase hex digits)",
                truncate(&s)
            ))
        })
    })
    .transpose()
}

impl Record {
    /// The annotation value: compact JSON.
    pub fn encode(&self) -> String {
        let wire = Wire {
            v: VERSION,
            profile: self.profile.clone(),
            generation: self.generation,
            labels: shorten(&self.labels),
            // Left out when it says nothing the labels do not.
            declared: self
                .declared
                .as_ref()
                .filter(|d| **d != self.labels)
                .map(|d| shorten(d)),
            held: self.declared.is_none(),
            prior: shorten(&self.prior),
            announced: WireAnnounced {
                pending: self.announced.pending.map(|d| d.to_string()),
                conflict: self.announced.conflict.map(|d| d.to_string()),
                blocked: self.announced.blocked.map(|d| d.to_string()),
            },
        };
        // A struct of strings and maps of strings: serializing it cannot fail.
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// Reads an annotation value; refuses (saying why) anything this build would not write.
    pub fn decode(text: &str) -> Result<Record, RecordError> {
        if text.len() > MAX_LEN {
            return Err(error(format!(
                "{} bytes, more than the {MAX_LEN} a ledger can take",
                text.len()
            )));
        }
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| error(format!("not JSON: {e}")))?;
        let Some(object) = value.as_object() else {
            return Err(error("not a JSON object"));
        };
        match object.get("v").map(|v| v.as_u64()) {
            Some(Some(v)) if v == u64::from(VERSION) => {}
            Some(Some(v)) => {
                return Err(error(format!(
                    "format version {v}: this operator reads version {VERSION}"
                )));
            }
            Some(None) => return Err(error("v: not a version number")),
            None => return Err(error("no format version (v)")),
        }
        let wire: Wire = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            error(format!("{path}: {}", e.into_inner()))
        })?;
        check_profile(&wire.profile)?;
        if wire.generation.is_some_and(|g| g < 0) {
            return Err(error("generation: negative"));
        }
        let labels = lengthen("labels", wire.labels)?;
        for (k, v) in &labels {
            check_value("labels", k, v)?;
        }
        let declared = match (wire.held, wire.declared) {
            (true, Some(_)) => {
                return Err(error(
                    "held and declared together: a held rollout declares nothing yet",
                ));
            }
            (true, None) => None,
            (false, None) => Some(labels.clone()),
            (false, Some(d)) => {
                let d = lengthen("declared", d)?;
                for (k, v) in &d {
                    check_value("declared", k, v)?;
                }
                Some(d)
            }
        };
        let prior = lengthen("prior", wire.prior)?;
        for (k, v) in &prior {
            if !labels.contains_key(k) {
                return Err(error(format!(
                    "prior.{}: the operator did not apply this label",
                    short(k)
                )));
            }
            if let Some(v) = v {
                check_value("prior", k, v)?;
            }
        }
        let labels = interned::labels(labels);
        Ok(Record {
            profile: wire.profile,
            generation: wire.generation,
            declared: declared.map(|d| {
                if d == *labels {
                    labels.clone()
                } else {
                    interned::labels(d)
                }
            }),
            labels,
            prior: interned::prior(prior),
            announced: Announced {
                pending: digest("pending", wire.announced.pending)?,
                conflict: digest("conflict", wire.announced.conflict)?,
                blocked: digest("blocked", wire.announced.blocked)?,
            },
        })
    }

    /// Whether two records say the same, the profile's generation aside (a profile edit that
    /// changes no label must not rewrite every namespace it governs).
    pub fn same_as(&self, other: &Record) -> bool {
        self.profile == other.profile
            && self.labels == other.labels
            && self.declared == other.declared
            && self.prior == other.prior
            && self.announced == other.announced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pss::level::labels as psa;
    use proptest::prelude::*;

    use crate::operator::testing::labels;

    fn sample() -> Record {
        Record {
            profile: "apps".into(),
            generation: Some(3),
            labels: labels(&[(psa::ENFORCE, "baseline"), (psa::ENFORCE_VERSION, "latest")]).into(),
            declared: Some(
                labels(&[(psa::ENFORCE, "baseline"), (psa::ENFORCE_VERSION, "latest")]).into(),
            ),
            prior: Arc::new(Prior::from([
                (psa::ENFORCE.to_owned(), Some("restricted".to_owned())),
                (psa::ENFORCE_VERSION.to_owned(), None),
            ])),
            announced: Announced {
                pending: Some(Digest(0x9f0c_3e6a_1b2d_4c5e)),
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_record_is_compact_json_with_the_profile_second() {
        let text = sample().encode();
        assert_eq!(
            text,
            r#"{"v":1,"profile":"apps","generation":3,"labels":{"enforce":"baseline","enforce-version":"latest"},"prior":{"enforce":"restricted","enforce-version":null},"announced":{"pending":"9f0c3e6a1b2d4c5e"}}"#
        );
        assert_eq!(Record::decode(&text), Ok(sample()));
    }

    #[test]
    fn a_stricter_value_kept_and_a_held_rollout_round_trip() {
        let mut kept = sample();
        Arc::make_mut(&mut kept.labels).insert(psa::ENFORCE.into(), "restricted".into());
        let text = kept.encode();
        assert!(
            text.contains(r#""declared":{"enforce":"baseline""#),
            "{text}"
        );
        assert_eq!(Record::decode(&text), Ok(kept));

        let mut held = sample();
        held.declared = None;
        let text = held.encode();
        assert!(text.contains(r#""held":true"#), "{text}");
        assert!(!text.contains("declared"), "{text}");
        assert_eq!(Record::decode(&text), Ok(held));
    }

    #[test]
    fn bad_values_are_refused_saying_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "not JSON"),
            (r#"{"v":1,"profile":"apps","labels":{"#, "not JSON"),
            ("[1,2]", "not a JSON object"),
            (r#"{"profile":"apps","labels":{}}"#, "no format version"),
            (
                r#"{"v":"1","profile":"apps","labels":{}}"#,
                "v: not a version number",
            ),
            (
                r#"{"v":2,"profile":"apps","labels":{}}"#,
                "format version 2: this operator reads version 1",
            ),
            (r#"{"v":1,"profile":"apps"}"#, "missing field `labels`"),
            (
                r#"{"v":1,"profile":"apps","labels":{},"owner":"me"}"#,
                "unknown field `owner`",
            ),
            (
                r#"{"v":1,"profile":"apps","labels":{"enforce":7}}"#,
                "labels.enforce: invalid type: integer `7`",
            ),
            (
                r#"{"v":1,"profile":"Apps!","labels":{}}"#,
                r#"profile: "Apps!" is not a profile name"#,
            ),
            (
                r#"{"v":1,"profile":"","labels":{}}"#,
                "is not a profile name",
            ),
            (
                r#"{"v":1,"profile":"a","generation":-1,"labels":{}}"#,
                "generation: negative",
            ),
            (
                r#"{"v":1,"profile":"a","labels":{"team":"x"}}"#,
                r#"labels: "team" is not a pod-security.kubernetes.io label"#,
            ),
            (
                r#"{"v":1,"profile":"a","labels":{"enforce":"base line"}}"#,
                r#"labels.enforce: "base line" is not a label value"#,
            ),
            (
                r#"{"v":1,"profile":"a","labels":{},"declared":{},"held":true}"#,
                "held and declared together",
            ),
            (
                r#"{"v":1,"profile":"a","labels":{},"prior":{"warn":"restricted"}}"#,
                "prior.warn: the operator did not apply this label",
            ),
            (
                r#"{"v":1,"profile":"a","labels":{"warn":"baseline"},"prior":{"warn":"-x"}}"#,
                r#"prior.warn: "-x" is not a label value"#,
            ),
            (
                r#"{"v":1,"profile":"a","labels":{},"announced":{"pending":"XYZ"}}"#,
                r#"announced.pending: "XYZ" is not a digest"#,
            ),
            (
                r#"{"v":1,"profile":"a","labels":{},"announced":{"later":"0000000000000000"}}"#,
                "unknown field `later`",
            ),
        ];
        for (text, want) in cases {
            let e = Record::decode(text).expect_err(text).to_string();
            assert!(e.contains(want), "{text}: {e} (wanted {want:?})");
        }
        // Oversized: refused before it is parsed.
        let big = format!(
            r#"{{"v":1,"profile":"a","labels":{{}},"x":"{}"}}"#,
            "y".repeat(MAX_LEN)
        );
        let e = Record::decode(&big).expect_err("oversized").to_string();
        assert!(e.contains("more than the 4096"), "{e}");
        // Nesting deeper than the parser's recursion limit: an error, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(3000), "]".repeat(3000));
        assert!(Record::decode(&deep).is_err());
        // A long hostile value is shown truncated.
        let long = format!(
            r#"{{"v":1,"profile":"a","labels":{{"enforce":"{}"}}}}"#,
            "x".repeat(100)
        );
        let e = Record::decode(&long).expect_err("long value").to_string();
        assert!(e.contains("...") && e.len() < 150, "{e}");
    }

    #[test]
    fn the_generation_alone_does_not_make_a_record_different() {
        let a = sample();
        let mut b = sample();
        b.generation = Some(4);
        assert!(a.same_as(&b));
        b.announced.conflict = Some(Digest::of(["a", "b"]));
        assert!(!a.same_as(&b));
    }

    #[test]
    fn digests_are_stable_and_tell_lists_apart() {
        assert_eq!(
            Digest::of(["a", "b"]),
            Digest::of(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_ne!(Digest::of(["ab"]), Digest::of(["a", "b"]));
        assert_ne!(Digest::of(["a", "b"]), Digest::of(["b", "a"]));
        assert_eq!(Digest::of([""; 0]).to_string(), "cbf29ce484222325");
        assert_eq!(Digest::parse(&Digest(42).to_string()), Some(Digest(42)));
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-zA-Z0-9]",
            "[a-zA-Z0-9][-a-zA-Z0-9_.]{0,61}[a-zA-Z0-9]",
        ]
    }

    fn label_map() -> impl Strategy<Value = Labels> {
        proptest::collection::btree_map(
            proptest::sample::select(SUFFIXES.to_vec()).prop_map(|s| format!("{PSA_PREFIX}{s}")),
            value(),
            0..=6,
        )
    }

    prop_compose! {
        fn record()(
            profile in "[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?",
            generation in proptest::option::of(0..i64::MAX),
            labels in label_map(),
            declared in proptest::option::of(label_map()),
            prior_values in proptest::collection::vec(proptest::option::of(value()), 6),
            digests in proptest::collection::vec(proptest::option::of(any::<u64>()), 3),
        ) -> Record {
            let prior = labels
                .keys()
                .zip(prior_values)
                .map(|(k, v)| (k.clone(), v))
                .collect();
            Record {
                profile,
                generation,
                labels: labels.into(),
                declared: declared.map(Into::into),
                prior: Arc::new(prior),
                announced: Announced {
                    pending: digests[0].map(Digest),
                    conflict: digests[1].map(Digest),
                    blocked: digests[2].map(Digest),
                },
            }
        }
    }

    proptest! {
        #[test]
        fn every_record_round_trips_and_fits(r in record()) {
            let text = r.encode();
            prop_assert!(text.len() <= MAX_LEN, "{} bytes", text.len());
            let head = format!(r#"{{"v":1,"profile":"{}""#, r.profile);
            prop_assert!(text.starts_with(&head), "{}", text);
            prop_assert_eq!(Record::decode(&text), Ok(r));
        }

        #[test]
        fn any_text_is_read_or_refused_never_a_panic(text in "\\PC{0,300}") {
            let _ = Record::decode(&text);
        }

        #[test]
        fn a_mangled_record_is_read_or_refused_never_a_panic(
            r in record(), cut in 0usize..2000, byte in any::<u8>(), at in 0usize..2000,
        ) {
            let text = r.encode();
            let mut bytes = text.as_bytes().to_vec();
            bytes.truncate(cut.min(bytes.len()));
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] = byte;
            }
            let _ = Record::decode(&String::from_utf8_lossy(&bytes));
        }
    }
}
