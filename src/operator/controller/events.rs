//! Kubernetes Events: queued by the pass and the label writer, posted in the background (a pass
//! never waits for them), `EVENTS_IN_FLIGHT` at a time. Every Event lands in the namespace it is
//! about; their texts are written here.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::{debug, warn};

use super::context::Context;
use super::pass::Unreadable;
use crate::operator::MANAGER;
use crate::operator::desired::{LabelChange, NamespacePlan};
use crate::operator::fence::{Fence, Refusal};
use crate::operator::ledger::{Announcement, Ledger};
use crate::operator::pods::SlimPod;
use crate::operator::record::ANNOTATION;
use crate::operator::workloads::{TemplateIndex, WorkloadKind};
use crate::pss::Mode;

/// Events posted at a time.
const EVENTS_IN_FLIGHT: usize = 8;
/// How long an Event waits for the leader Lease to be confirmed (renewals come every ~10 s).
const ADMIT_WAIT: Duration = Duration::from_secs(20);
/// Blocking Pods named in a `RolloutPending` Event.
const PODS_IN_EVENT: usize = 10;

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
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    let _ = ctx.events.send((reference.clone(), event));
}

/// Posts queued Events, up to `EVENTS_IN_FLIGHT` at a time, while the fence allows writes.
pub(super) async fn post(
    ctx: Arc<Context>,
    queue: tokio::sync::mpsc::UnboundedReceiver<(ObjectReference, Event)>,
) {
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
                // The lease not confirmed (yet): wait for it a while rather than lose the Event;
                // stepping down: drop it (the client's gate would refuse it anyway).
                if !admitted(&ctx.fence).await {
                    debug!(reason = %event.reason, "event dropped: this replica may not write");
                    return;
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
