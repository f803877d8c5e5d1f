//! Kubernetes Events: queued by the pass and the label writer, posted in the background (a pass
//! never waits for them), `EVENTS_IN_FLIGHT` at a time, and only while no label write waits for
//! a slot: labels are what protects the cluster, Events only tell about it. Every Event lands in
//! the namespace it is about, or in `default` when it is about a profile (cluster-scoped); their
//! texts are written here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::context::Context;
use super::pass::Unreadable;
use crate::operator::MANAGER;
use crate::operator::crd::PodSecurityProfile;
use crate::operator::desired::{LabelChange, NamespacePlan};
use crate::operator::fence::{Fence, Refusal};
use crate::operator::labels::LabelWrite;
use crate::operator::ledger::{Announcement, Ledger};
use crate::operator::pods::SlimPod;
use crate::operator::record::ANNOTATION;
use crate::operator::workloads::{TemplateIndex, WorkloadKind};
use crate::pss::Mode;

/// Events posted at a time.
const EVENTS_IN_FLIGHT: usize = 8;
/// Events waiting to be posted, at most: beyond it new ones are dropped (counted and logged).
/// Events are best effort (the API server keeps them an hour); statuses and metrics are the
/// record. Bounded so that a burst cannot grow memory without limit.
const QUEUE_CAPACITY: usize = 4096;
/// How long an Event waits for the leader Lease to be confirmed (renewals come every ~10 s).
const ADMIT_WAIT: Duration = Duration::from_secs(20);
/// Blocking Pods named in a `RolloutPending` Event.
const PODS_IN_EVENT: usize = 10;
/// Namespaces one profile labels in one pass above which they are announced by one Event on the
/// profile instead of one per namespace: 9,000 namespaces labelled at start were 9,000 Event
/// creates competing with the label writes for the API server.
pub(super) const BULK_ABOVE: usize = 20;
/// Namespaces named in a bulk `LabelsApplied` Event.
const NAMESPACES_IN_EVENT: usize = 5;
/// Label sets listed in a bulk `LabelsApplied` Event.
const LABEL_SETS_IN_EVENT: usize = 3;
/// events.k8s.io/v1 refuses a longer note.
const NOTE_MAX_BYTES: usize = 1024;

/// The Events waiting to be posted, and how many were dropped since the poster last said so.
pub(super) struct Queue {
    sender: mpsc::Sender<(ObjectReference, Event)>,
    dropped: AtomicUsize,
}

impl Queue {
    pub fn new() -> (Queue, mpsc::Receiver<(ObjectReference, Event)>) {
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let queue = Queue {
            sender,
            dropped: AtomicUsize::new(0),
        };
        (queue, receiver)
    }
}

/// Queues an Event about `reference`. Not awaited: at 100 drifts/s (or 1,800 namespaces
/// labelled at start) posting each Event inside the pass made every later repair wait for the
/// Events of the earlier ones.
pub(super) fn queue(
    ctx: &Context,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(within_note_limit(note)),
        action: "Reconcile".into(),
        secondary: None,
    };
    let queue = &ctx.events;
    if let Err(mpsc::error::TrySendError::Full((_, event))) =
        queue.sender.try_send((reference.clone(), event))
        && queue.dropped.fetch_add(1, Ordering::Relaxed) == 0
    {
        warn!(reason = %event.reason, capacity = QUEUE_CAPACITY, "event queue full: dropping Events until it drains");
    }
}

/// Posts queued Events, up to `EVENTS_IN_FLIGHT` at a time, while the fence allows writes and
/// no label write waits for a slot.
pub(super) async fn post(ctx: Arc<Context>, queue: mpsc::Receiver<(ObjectReference, Event)>) {
    let client: Client = ctx.client.clone();
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: Some(ctx.config.identity.clone()),
    };
    futures::stream::unfold(queue, |mut q| async move { q.recv().await.map(|e| (e, q)) })
        .for_each_concurrent(EVENTS_IN_FLIGHT, |(reference, event)| {
            // A fresh recorder per event: a shared one folds events with the same reason into
            // one series and keeps the first note, which would hide which label/value a later
            // drift was about. These events are only emitted on changes: nothing to fold.
            let recorder = Recorder::new(client.clone(), reporter.clone());
            let ctx = ctx.clone();
            async move {
                // Every Event create taken from the API server while label writes queue delays
                // the labels (on a fresh cluster, all of them).
                ctx.writes.idle().await;
                // The lease not confirmed (yet): wait for it a while rather than lose the Event;
                // stepping down: drop it (the client's gate would refuse it anyway).
                if !admitted(&ctx.fence).await {
                    debug!(reason = %event.reason, "event dropped: this replica may not write");
                    return;
                }
                let dropped = ctx.events.dropped.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    warn!(dropped, "events dropped while their queue was full");
                }
                match recorder.publish(&event, &reference).await {
                    Ok(()) => {}
                    // The namespace is being deleted: nothing left to tell about it.
                    Err(kube::Error::Api(s)) if namespace_terminating(&s) => {
                        debug!(reason = %event.reason, "event dropped: its namespace is being deleted")
                    }
                    Err(e) => warn!(error = %e, reason = %event.reason, "publishing event"),
                }
            }
        })
        .await;
}

/// `note` cut to what the API server accepts, at a character boundary.
fn within_note_limit(mut note: String) -> String {
    if note.len() > NOTE_MAX_BYTES {
        const MORE: &str = "...";
        let mut end = NOTE_MAX_BYTES - MORE.len();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str(MORE);
    }
    note
}

/// The labels a write applies that are not drift repairs, and the profile applying them: what a
/// `LabelsApplied` Event announces. `None` for a write that applies nothing new.
pub(super) fn applied(write: &LabelWrite) -> Option<(&str, Vec<&LabelChange>)> {
    let LabelWrite::Apply {
        changes,
        drifted,
        profiles,
        ..
    } = write
    else {
        return None;
    };
    let applied: Vec<&LabelChange> = changes
        .iter()
        .filter(|c| !drifted.contains(&c.label))
        .collect();
    let profile = profiles.first().map_or("", String::as_str);
    (!applied.is_empty()).then_some((profile, applied))
}

/// The profiles that label more than `BULK_ABOVE` namespaces with `writes` (one pass's), with how
/// many: announced by one Event on the profile. The others, and every drift repair, keep an
/// Event per namespace.
pub(super) fn bulk_profiles(writes: &[LabelWrite]) -> HashMap<String, usize> {
    let mut labelled: HashMap<&str, usize> = HashMap::new();
    for (profile, _) in writes.iter().filter_map(applied) {
        *labelled.entry(profile).or_default() += 1;
    }
    labelled
        .into_iter()
        .filter(|(_, n)| *n > BULK_ABOVE)
        .map(|(profile, n)| (profile.to_owned(), n))
        .collect()
}

/// `label=value, ...` of the labels applied.
pub(super) fn labels_text(applied: &[&LabelChange]) -> String {
    let text: Vec<String> = applied
        .iter()
        .map(|c| format!("{}={}", c.label, c.want))
        .collect();
    text.join(", ")
}

/// The note of a `LabelsApplied` Event on a namespace.
pub(super) fn labels_applied(profile: &str, labels: &str) -> String {
    format!("profile {profile} applied {labels}")
}

/// One profile's namespaces labelled by one pass (see [`bulk_profiles`]): one `LabelsApplied`
/// Event on the profile once the last of their writes is booked.
pub(super) struct Bulk {
    profile: ObjectReference,
    tally: Mutex<Tally>,
}

impl Bulk {
    pub fn new(ctx: &Context, profile: &str, writes: usize) -> Bulk {
        let uid = ctx
            .profiles
            .get(&ObjectRef::new(profile))
            .and_then(|guarded| guarded.0.as_ref().ok().and_then(|p| p.uid()));
        Bulk {
            profile: profile_ref(profile, uid),
            tally: Mutex::new(Tally::new(profile, writes)),
        }
    }

    /// Books a write that labelled `ns` with `labels` (see [`labels_text`]).
    pub fn landed(&self, ctx: &Context, ns: &str, labels: String) {
        self.book(ctx, Some((ns, labels)));
    }

    /// Books a write that failed (a later pass retries it).
    pub fn failed(&self, ctx: &Context) {
        self.book(ctx, None);
    }

    fn book(&self, ctx: &Context, labelled: Option<(&str, String)>) {
        let note = self
            .tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .book(labelled);
        if let Some(note) = note {
            queue(ctx, &self.profile, EventType::Normal, "LabelsApplied", note);
        }
    }
}

/// What the writes of a [`Bulk`] did so far.
#[derive(Debug)]
struct Tally {
    profile: String,
    writes: usize,
    /// Namespaces per label set applied.
    labelled: BTreeMap<String, usize>,
    /// The first namespaces labelled, by name.
    first: BTreeSet<String>,
    failed: usize,
}

impl Tally {
    fn new(profile: &str, writes: usize) -> Tally {
        Tally {
            profile: profile.to_owned(),
            writes,
            labelled: BTreeMap::new(),
            first: BTreeSet::new(),
            failed: 0,
        }
    }

    /// Books one write (`None`: failed); returns the note once every write is booked, unless
    /// none labelled anything (the retries announce them).
    fn book(&mut self, labelled: Option<(&str, String)>) -> Option<String> {
        match labelled {
            Some((ns, labels)) => {
                *self.labelled.entry(labels).or_default() += 1;
                self.first.insert(ns.to_owned());
                if self.first.len() > NAMESPACES_IN_EVENT {
                    self.first.pop_last();
                }
            }
            None => self.failed += 1,
        }
        let done = self.labelled.values().sum::<usize>() + self.failed >= self.writes;
        (done && !self.labelled.is_empty()).then(|| self.note())
    }

    /// The note of a bulk `LabelsApplied` Event: counts and names first, so that a cut to the
    /// note limit falls on the label sets.
    fn note(&self) -> String {
        let total: usize = self.labelled.values().sum();
        let mut note = format!(
            "profile {} applied labels to {total} namespaces",
            self.profile
        );
        if self.failed > 0 {
            note.push_str(&format!(
                " ({} more failed and are retried: see the profile's status)",
                self.failed
            ));
        }
        let first: Vec<&str> = self.first.iter().map(String::as_str).collect();
        note.push_str(&format!(", among them {}: ", first.join(", ")));
        if self.labelled.len() == 1
            && let Some(labels) = self.labelled.keys().next()
        {
            note.push_str(labels);
            return note;
        }
        let mut sets: Vec<(&String, &usize)> = self.labelled.iter().collect();
        // The most common label sets first.
        sets.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let mut parts: Vec<String> = sets
            .iter()
            .take(LABEL_SETS_IN_EVENT)
            .map(|(labels, n)| format!("{labels} on {n}"))
            .collect();
        let others: usize = sets
            .iter()
            .skip(LABEL_SETS_IN_EVENT)
            .map(|(_, n)| **n)
            .sum();
        if others > 0 {
            parts.push(format!("other labels on {others}"));
        }
        note.push_str(&parts.join("; "));
        note
    }
}

/// A profile, as an Event's subject: cluster-scoped, so the Event lands in `default` (kube-rs's
/// Recorder; kube-apiserver accepts only `default` or `kube-system` for a cluster-scoped object,
/// and `kubectl describe podsecurityprofile` finds it there by uid).
fn profile_ref(name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some(PodSecurityProfile::api_version(&()).into_owned()),
        kind: Some(PodSecurityProfile::kind(&()).into_owned()),
        name: Some(name.into()),
        namespace: None,
        uid,
        ..Default::default()
    }
}

/// Whether writes may go out, waiting up to `ADMIT_WAIT` while the lease is only unconfirmed.
async fn admitted(fence: &Fence) -> bool {
    let deadline = tokio::time::Instant::now() + ADMIT_WAIT;
    loop {
        match fence.admit() {
            Ok(()) => return true,
            Err(Refusal::Standstill { .. }) => return false,
            Err(Refusal::Unconfirmed { .. }) if tokio::time::Instant::now() >= deadline => {
                return false;
            }
            Err(Refusal::Unconfirmed { .. }) => tokio::time::sleep(Fence::TICK).await,
        }
    }
}

/// Whether the API server refused a write because its namespace is being deleted.
fn namespace_terminating(s: &kube::core::Status) -> bool {
    s.details
        .iter()
        .flat_map(|d| &d.causes)
        .any(|c| c.reason == "NamespaceTerminating")
}

pub(super) fn namespace_ref(ns: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Namespace".into()),
        name: Some(ns.into()),
        // The Event lands in the namespace itself, next to what it is about.
        namespace: Some(ns.into()),
        uid,
        ..Default::default()
    }
}

/// An Event to queue once the pass has let go of the shared state.
pub(super) struct Announce {
    reference: ObjectReference,
    type_: EventType,
    reason: &'static str,
    note: String,
}

/// Queues the Events a pass decided on.
pub(super) fn queue_all(ctx: &Context, events: Vec<Announce>) {
    for a in events {
        queue(ctx, &a.reference, a.type_, a.reason, a.note);
    }
}

/// Events for rollouts that start waiting and for new conflicts; each announced once (see
/// [`crate::operator::ledger::Ledger::announcements`]).
pub(super) fn announcements<'a>(
    ctx: &Context,
    ledger: &mut Ledger,
    plans: impl Iterator<Item = &'a NamespacePlan>,
) -> Vec<Announce> {
    let announcements: Vec<Announcement> =
        plans.flat_map(|plan| ledger.announcements(plan)).collect();
    announcements
        .into_iter()
        .map(|a| {
            let (ns, type_, reason, note) = match a {
                Announcement::RolloutPending {
                    ns,
                    target,
                    blocking,
                } => {
                    let shown: Vec<&str> = blocking
                        .iter()
                        .take(PODS_IN_EVENT)
                        .map(String::as_str)
                        .collect();
                    let note = format!(
                        "enforce={target} waits for {} running Pods that violate it: {}",
                        blocking.len(),
                        shown.join(", ")
                    );
                    (ns, EventType::Normal, "RolloutPending", note)
                }
                Announcement::Conflict { ns, profiles } => {
                    let note = format!(
                        "profiles {} select this namespace with the same priority; the most restrictive level per mode applies",
                        profiles.join(", ")
                    );
                    (ns, EventType::Warning, "ProfileConflict", note)
                }
            };
            Announce {
                reference: namespace_ref(&ns, ctx.namespace_uid(&ns)),
                type_,
                reason,
                note,
            }
        })
        .collect()
}

/// A Warning Event on each workload that became blocked since it was last announced: its Pod
/// template violates the enforce level now in force in a re-planned namespace.
pub(super) fn blocked<'a>(
    ledger: &mut Ledger,
    templates: &TemplateIndex<SlimPod>,
    plans: impl Iterator<Item = &'a NamespacePlan>,
) -> Vec<Announce> {
    let mut events = Vec::new();
    for plan in plans.filter(|p| p.write && !p.governed_by.is_empty()) {
        // (`Kind/name`, kind, name) of each blocked workload.
        let blocked: Vec<(String, WorkloadKind, &str)> = templates
            .violators(&plan.name, Mode::Enforce)
            .map(|w| {
                (
                    format!("{}/{}", w.kind, w.violator.pod),
                    w.kind,
                    w.violator.pod,
                )
            })
            .collect();
        let keys = blocked.iter().map(|(key, ..)| key.clone()).collect();
        let new = ledger.newly_blocked(&plan.name, keys);
        for (_, kind, name) in blocked.into_iter().filter(|(key, ..)| new.contains(key)) {
            let message = templates
                .message(kind, &plan.name, name, Mode::Enforce)
                .unwrap_or_default();
            let note = format!(
                "the Pod template breaks enforce={} of namespace {} (profile {}): the API server refuses its next Pod: {message}",
                plan.policy.enforce,
                plan.name,
                plan.primary().unwrap_or_default()
            );
            events.push(Announce {
                reference: workload_ref(kind, &plan.name, name),
                type_: EventType::Warning,
                reason: "PodSecurityBlocked",
                note,
            });
        }
    }
    events
}

/// A Warning Event and a log line for each ledger annotation that is not a record (once per
/// value): the namespace is treated as having no ledger, and its next label write replaces it.
pub(super) fn unreadable_records(
    ctx: &Context,
    ledger: &mut Ledger,
    unreadable: Vec<Unreadable>,
) -> Vec<Announce> {
    unreadable
        .into_iter()
        .filter(|u| ledger.invalid_record(&u.ns, &u.value))
        .map(|u| {
            warn!(namespace = %u.ns, annotation = ANNOTATION, error = %u.error, "ignoring an unreadable ledger annotation: treated as no ledger");
            Announce {
                reference: namespace_ref(&u.ns, ctx.namespace_uid(&u.ns)),
                type_: EventType::Warning,
                reason: "LedgerInvalid",
                note: invalid_note(&u.error),
            }
        })
        .collect()
}

/// The note of a `LedgerInvalid` Event.
pub(super) fn invalid_note(error: &str) -> String {
    format!(
        "annotation {ANNOTATION} is not a ledger this operator wrote ({error}): ignored, the namespace is treated as having none (drift made while no operator ran cannot be told; deletionPolicy Remove takes off only the labels the operator owns); the next label write replaces it"
    )
}

fn workload_ref(kind: WorkloadKind, ns: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(kind.api_version().into()),
        kind: Some(kind.as_str().into()),
        name: Some(name.into()),
        namespace: Some(ns.into()),
        ..Default::default()
    }
}

/// The value a drifted label had: quoted, or `<removed>`.
pub(super) fn found(c: &LabelChange) -> String {
    c.found
        .as_deref()
        .map_or("<removed>".to_owned(), |v| format!("{v:?}"))
}

/// The note of a `LabelsRemoved` Event, if the release changed a label.
pub(super) fn released(restored: &[String], removed: &[String]) -> Option<String> {
    let mut parts = Vec::new();
    if !restored.is_empty() {
        parts.push(format!(
            "restored {} (the values before the operator took them over)",
            restored.join(", ")
        ));
    }
    if !removed.is_empty() {
        parts.push(format!("removed {}", removed.join(", ")));
    }
    (!parts.is_empty()).then(|| {
        format!(
            "the profile was deleted with deletionPolicy Remove: {}",
            parts.join("; ")
        )
    })
}

/// The note of a `LabelDriftRepaired` Event.
pub(super) fn drift_repaired(c: &LabelChange, profile: &str) -> String {
    format!(
        "label {} was {}, restored to {:?} (profile {profile})",
        c.label,
        found(c),
        c.want
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::record::Record;

    const ENFORCE: &str = "pod-security.kubernetes.io/enforce";
    const WARN: &str = "pod-security.kubernetes.io/warn";

    /// An apply by `profile` on `ns` setting `fresh` and repairing `repaired`.
    fn apply(ns: &str, profile: &str, fresh: &[&str], repaired: &[&str]) -> LabelWrite {
        let change = |label: &&str| LabelChange {
            label: (*label).to_owned(),
            found: None,
            want: "baseline".into(),
        };
        LabelWrite::Apply {
            ns: ns.into(),
            changes: fresh.iter().chain(repaired).map(change).collect(),
            drifted: repaired.iter().map(|l| (*l).to_owned()).collect(),
            profiles: vec![profile.into()],
            record: Box::new(Record::default()),
        }
    }

    #[test]
    fn more_than_the_threshold_of_namespaces_labelled_by_one_profile_are_announced_together() {
        let mut writes: Vec<LabelWrite> = (0..=BULK_ABOVE)
            .map(|i| apply(&format!("web-{i}"), "web", &[ENFORCE], &[]))
            .collect();
        // At the threshold: an Event per namespace.
        writes.extend(
            (0..BULK_ABOVE).map(|i| apply(&format!("batch-{i}"), "batch", &[ENFORCE], &[])),
        );
        // Drift repairs and releases never count: each keeps its own Event.
        writes.extend((0..50).map(|i| apply(&format!("batch-r{i}"), "batch", &[], &[ENFORCE])));
        writes.extend((0..50).map(|i| LabelWrite::Release {
            ns: format!("batch-x{i}"),
        }));
        assert_eq!(
            bulk_profiles(&writes),
            HashMap::from([("web".to_owned(), BULK_ABOVE + 1)])
        );
    }

    #[test]
    fn a_write_that_also_repairs_drift_counts_for_its_fresh_labels_only() {
        let write = apply("a", "web", &[WARN], &[ENFORCE]);
        let (profile, fresh) = applied(&write).expect("a fresh label");
        assert_eq!(profile, "web");
        assert_eq!(labels_text(&fresh), format!("{WARN}=baseline"));
        assert!(applied(&apply("a", "web", &[], &[ENFORCE])).is_none());
        assert!(applied(&LabelWrite::Release { ns: "a".into() }).is_none());
    }

    #[test]
    fn the_bulk_event_comes_after_the_last_write_with_counts_label_sets_and_the_first_names() {
        let mut tally = Tally::new("web", 8);
        let enforce = format!("{ENFORCE}=baseline");
        let warn = format!("{WARN}=restricted");
        for ns in ["web-7", "web-3", "web-5", "web-1", "web-6"] {
            assert_eq!(tally.book(Some((ns, enforce.clone()))), None);
        }
        assert_eq!(tally.book(Some(("web-2", warn.clone()))), None);
        assert_eq!(tally.book(Some(("web-4", enforce.clone()))), None);
        let note = tally.book(None).expect("the last write booked");
        assert_eq!(
            note,
            format!(
                "profile web applied labels to 7 namespaces (1 more failed and are retried: see the profile's status), among them web-1, web-2, web-3, web-4, web-5: {enforce} on 6; {warn} on 1"
            )
        );
    }

    #[test]
    fn one_label_set_is_named_once_and_a_bulk_that_labelled_nothing_is_not_announced() {
        let mut tally = Tally::new("web", 2);
        tally.book(Some(("a", format!("{ENFORCE}=baseline"))));
        assert_eq!(
            tally.book(Some(("b", format!("{ENFORCE}=baseline")))),
            Some(format!(
                "profile web applied labels to 2 namespaces, among them a, b: {ENFORCE}=baseline"
            ))
        );
        let mut failed = Tally::new("web", 2);
        assert_eq!(failed.book(None), None);
        assert_eq!(failed.book(None), None, "the retries announce them");
    }

    #[test]
    fn label_sets_beyond_the_few_shown_are_counted_together() {
        let mut tally = Tally::new("web", LABEL_SETS_IN_EVENT + 2);
        let mut note = None;
        for i in 0..LABEL_SETS_IN_EVENT + 2 {
            note = tally.book(Some((&format!("ns-{i}"), format!("{ENFORCE}=v{i}"))));
        }
        let note = note.expect("complete");
        assert!(note.ends_with("; other labels on 2"), "{note}");
    }

    #[test]
    fn a_note_over_the_api_limit_is_cut_at_a_character_boundary() {
        let short = "profile p applied x".to_owned();
        assert_eq!(within_note_limit(short.clone()), short);
        let cut = within_note_limit("é".repeat(NOTE_MAX_BYTES));
        assert!(cut.len() <= NOTE_MAX_BYTES, "{}", cut.len());
        assert!(cut.ends_with("..."));
        assert!(cut.trim_end_matches("...").chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_profile_event_has_no_namespace_so_it_lands_in_default() {
        let reference = profile_ref("web", Some("u1".into()));
        assert_eq!(reference.namespace, None);
        assert_eq!(reference.kind.as_deref(), Some("PodSecurityProfile"));
        assert_eq!(
            reference.api_version.as_deref(),
            Some("pss-operator.io/v1alpha1")
        );
        assert_eq!(reference.uid.as_deref(), Some("u1"));
    }

    #[test]
    fn a_drift_note_names_the_label_what_was_found_and_what_was_restored() {
        let change = |found: Option<&str>| LabelChange {
            label: "pod-security.kubernetes.io/enforce".into(),
            found: found.map(str::to_owned),
            want: "baseline".into(),
        };
        assert_eq!(
            drift_repaired(&change(Some("privileged")), "apps"),
            r#"label pod-security.kubernetes.io/enforce was "privileged", restored to "baseline" (profile apps)"#
        );
        assert_eq!(
            drift_repaired(&change(None), "apps"),
            r#"label pod-security.kubernetes.io/enforce was <removed>, restored to "baseline" (profile apps)"#
        );
    }
}
