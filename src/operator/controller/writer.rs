//! The label writer: applies the queued label writes, `LABEL_WRITES_IN_FLIGHT` at a time, and
//! books each answer as it lands (ledger, drift count, Events); a failed write is retried by a
//! later pass after a growing delay. Passes never wait for writes: a pass that waited for its
//! slowest write made every later repair wait for it too. Events wait while writes queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::context::{Context, QueuedWrite, Shared, Unseen, resource_version};
use super::events;
use crate::operator::MANAGER;
use crate::operator::desired::Labels;
use crate::operator::error::Result;
use crate::operator::labels::{LabelWrite, Restore, restore};
use crate::operator::record::{ANNOTATION, Record};

/// Label applies in flight: at 100 drifts/s on a 50k-Pod cluster, 8 in flight (~60-240 ms
/// each) could not keep up and repairs queued for seconds.
const LABEL_WRITES_IN_FLIGHT: usize = 32;

/// The label writes queued for the writer, and how many of them wait for a slot.
pub(super) struct Queue {
    sender: mpsc::UnboundedSender<QueuedWrite>,
    /// Writes queued and not started yet (a namespace has at most one queued or in flight).
    waiting: watch::Sender<usize>,
}

impl Queue {
    pub fn new() -> (Queue, mpsc::UnboundedReceiver<QueuedWrite>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let queue = Queue {
            sender,
            waiting: watch::Sender::new(0),
        };
        (queue, receiver)
    }

    fn push(&self, write: QueuedWrite) {
        // Counted before it is sent, so the writer never takes it before it is counted.
        self.waiting.send_if_modified(|n| {
            *n += 1;
            false
        });
        if self.sender.send(write).is_err() {
            self.started();
        }
    }

    /// A write left the queue for a slot; wakes whoever waits for the queue to empty.
    fn started(&self) {
        self.waiting.send_if_modified(|n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }

    /// Returns once no write waits for a slot (writes may still be in flight).
    pub async fn idle(&self) {
        let mut waiting = self.waiting.subscribe();
        // The sender lives as long as the queue: `wait_for` cannot fail while we borrow it.
        let _ = waiting.wait_for(|n| *n == 0).await;
    }
}

/// Queues one pass's label writes; the namespaces a profile labels in bulk share one Event (see
/// [`events::bulk_profiles`]).
pub(super) fn queue(ctx: &Context, writes: Vec<LabelWrite>) {
    let bulks: HashMap<String, Arc<events::Bulk>> = events::bulk_profiles(&writes)
        .into_iter()
        .map(|(profile, n)| {
            let bulk = Arc::new(events::Bulk::new(ctx, &profile, n));
            (profile, bulk)
        })
        .collect();
    for write in writes {
        let bulk = events::applied(&write).and_then(|(profile, _)| bulks.get(profile).cloned());
        ctx.writes.push(QueuedWrite {
            uid: ctx.namespace_uid(write.namespace()),
            write,
            bulk,
        });
    }
}

pub(super) async fn label_writer(ctx: Arc<Context>, queue: mpsc::UnboundedReceiver<QueuedWrite>) {
    let taken = ctx.clone();
    futures::stream::unfold(queue, move |mut q| {
        let ctx = taken.clone();
        async move {
            // Polled only when a slot is free: taking a write starts it.
            let write = q.recv().await?;
            ctx.writes.started();
            Some((write, q))
        }
    })
    .for_each_concurrent(LABEL_WRITES_IN_FLIGHT, |queued| {
        let ctx = ctx.clone();
        async move {
            // Saves a request the client's write gate would refuse anyway.
            let result = match ctx.fence.check() {
                Ok(()) => write_labels(&ctx.client, &queued.write).await,
                Err(e) => Err(e),
            };
            book(&ctx, queued, result);
        }
    })
    .await;
}

/// What a label write left on the namespace.
pub(super) struct Applied {
    pub resource_version: Option<u64>,
    pub labels: Labels,
    /// The ledger record the namespace carries now.
    pub record: Option<Record>,
    /// What a release did.
    pub restore: Option<Restore>,
}

impl Applied {
    fn from_namespace(ns: &Namespace, restore: Option<Restore>) -> Applied {
        Applied {
            resource_version: resource_version(ns.resource_version()),
            labels: ns.labels().clone(),
            record: ns
                .annotations()
                .get(ANNOTATION)
                .and_then(|a| Record::decode(a).ok()),
            restore,
        }
    }
}

/// Writes one label write: a server-side apply of the PSA labels (and the record), and nothing
/// else, under our field manager; or the merge patch of a release.
pub(super) async fn write_labels(client: &Client, w: &LabelWrite) -> Result<Applied> {
    let api = Api::<Namespace>::all(client.clone());
    let ns = w.namespace();
    let body = match w {
        LabelWrite::Apply { record, .. } => json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": ns,
                "labels": &*record.labels,
                "annotations": { ANNOTATION: record.encode() },
            },
        }),
        // Without the record: it goes, and the labels we own stay as they are.
        LabelWrite::Unmark { keep, .. } => json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": ns, "labels": keep },
        }),
        LabelWrite::Release { .. } => return release(&api, ns).await,
    };
    let applied = api
        .patch(
            ns,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    Ok(Applied::from_namespace(&applied, None))
}

/// Puts back what the namespace had before the takeover, as read just now (see [`restore`]).
/// Read with a list by name (metadata only, every managedFields entry): the operator lists and
/// watches namespaces, it never needs to `get` one.
async fn release(api: &Api<Namespace>, ns: &str) -> Result<Applied> {
    let found = api
        .list_metadata(&ListParams::default().fields(&format!("metadata.name={ns}")))
        .await?;
    let Some(current) = found.items.into_iter().next() else {
        // Gone: nothing to release.
        return Ok(Applied {
            resource_version: None,
            labels: Labels::new(),
            record: None,
            restore: None,
        });
    };
    let plan = restore(&current.metadata);
    if let Some(e) = &plan.record_error {
        warn!(namespace = %ns, annotation = ANNOTATION, error = %e, "releasing without the ledger: unreadable, treated as none");
    }
    let Some(patch) = &plan.patch else {
        return Ok(Applied {
            resource_version: None,
            labels: current.labels().clone(),
            record: None,
            restore: Some(plan),
        });
    };
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let released = api.patch(ns, &params, &Patch::Merge(patch)).await?;
    Ok(Applied::from_namespace(&released, Some(plan)))
}

/// Books the answer to one label write.
pub(super) fn book(ctx: &Arc<Context>, queued: QueuedWrite, result: Result<Applied>) {
    let ns = queued.write.namespace().to_owned();
    match result {
        Ok(applied) => {
            let ours = applied.resource_version;
            book_landed(&mut ctx.shared(), &queued.write, &applied);
            report_landed(ctx, queued, applied.restore);
            // The namespace watch delivers our write, usually after this, and wakes the next
            // pass. When it came first, the pass it woke found the namespace still in flight:
            // wake one now, or the drift count and the namespace's plan would wait for the next
            // event. (A wake per landed write kept passes running back to back.)
            let seen = ctx.stored_version(&ns);
            if ours.is_none_or(|ours| seen.is_some_and(|seen| seen >= ours)) {
                ctx.wake.notify_one();
            }
        }
        Err(e) => {
            warn!(namespace = %ns, error = %e, "writing labels");
            ctx.metrics.error("namespace", &e);
            if let Some(bulk) = &queued.bulk {
                bulk.failed(ctx);
            }
            // The namespace stays marked in flight until its retry is due, so the passes in
            // between leave it alone.
            let delay = {
                let mut shared = ctx.shared();
                shared.ledger.write_failed(&ns, e.to_string());
                shared.write_retry.failed()
            };
            retry_after(ctx.clone(), ns, delay);
        }
    }
}

/// The state a landed write leaves: not in flight, no error, the labels and record it returned
/// (until the store shows them), the ledger and the drift count.
fn book_landed(shared: &mut Shared, write: &LabelWrite, applied: &Applied) {
    let ns = write.namespace();
    shared.in_flight.remove(ns);
    shared.ledger.write_landed(ns);
    shared.write_retry.succeeded();
    shared.dirty.mark(ns);
    if let Some(version) = applied.resource_version {
        shared.unseen_writes.insert(
            ns.to_owned(),
            Unseen {
                version,
                labels: Arc::new(applied.labels.clone()),
                record: applied.record.clone(),
            },
        );
    }
    match write {
        LabelWrite::Apply {
            record,
            drifted,
            profiles,
            ..
        } => {
            shared.ledger.applied(ns, record);
            if !drifted.is_empty() {
                shared.ledger.count_drift(profiles, drifted.len());
            }
        }
        LabelWrite::Unmark { .. } | LabelWrite::Release { .. } => shared.ledger.released(ns),
    }
}

/// Logs, drift metrics and Events of a landed write.
fn report_landed(ctx: &Context, queued: QueuedWrite, restored: Option<Restore>) {
    let QueuedWrite { write, uid, bulk } = queued;
    let reference = events::namespace_ref(write.namespace(), uid);
    match write {
        LabelWrite::Apply {
            ns,
            changes,
            drifted,
            profiles,
            record,
        } => {
            let primary = profiles.first().cloned().unwrap_or_default();
            let (repaired, applied): (Vec<_>, Vec<_>) =
                changes.iter().partition(|c| drifted.contains(&c.label));
            for c in &repaired {
                ctx.metrics.drift(&ns, &primary, &c.label);
                let found = events::found(c);
                info!(namespace = %ns, profile = %primary, label = %c.label, found = %found, restored = %c.want, "drift repaired");
                let note = events::drift_repaired(c, &primary);
                events::queue(
                    ctx,
                    &reference,
                    EventType::Warning,
                    "LabelDriftRepaired",
                    note,
                );
            }
            if !applied.is_empty() {
                let text = events::labels_text(&applied);
                info!(namespace = %ns, profile = %primary, labels = %text, "labels applied");
                match bulk {
                    Some(bulk) => bulk.landed(ctx, &ns, text),
                    None => {
                        let note = events::labels_applied(&primary, &text);
                        events::queue(ctx, &reference, EventType::Normal, "LabelsApplied", note);
                    }
                }
            }
            if changes.is_empty() {
                debug!(namespace = %ns, profile = %primary, generation = ?record.generation, "ledger written");
            }
        }
        LabelWrite::Unmark { ns, .. } => {
            info!(namespace = %ns, "ledger removed: the namespace is no longer governed (its labels stay)");
        }
        LabelWrite::Release { ns } => {
            let Some(r) = restored.filter(|r| r.patch.is_some()) else {
                return;
            };
            let restored: Vec<String> =
                r.restored.iter().map(|(k, v)| format!("{k}={v}")).collect();
            info!(namespace = %ns, restored = %restored.join(","), removed = %r.removed.join(","), "labels removed (deletionPolicy Remove)");
            if let Some(note) = events::released(&restored, &r.removed) {
                events::queue(ctx, &reference, EventType::Normal, "LabelsRemoved", note);
            }
        }
    }
}

/// Frees a failed write's namespace for the pass once its retry is due.
fn retry_after(ctx: Arc<Context>, ns: String, delay: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let mut shared = ctx.shared();
        shared.in_flight.remove(&ns);
        shared.dirty.mark(&ns);
        drop(shared);
        ctx.wake.notify_one();
    });
}

#[cfg(test)]
mod tests {
    use super::super::context::Dirty;
    use super::super::fixtures::{booking_context, serve_next, serve_one, woken};
    use super::*;
    use crate::operator::desired::Prior;
    use crate::operator::error::Error;
    use crate::pss::level::labels as psa;
    use futures::FutureExt as _;
    use kube::runtime::watcher;

    use crate::operator::testing::labels;

    #[tokio::test]
    async fn labels_and_the_record_are_server_side_applied_by_one_field_manager_and_nothing_else() {
        let (service, handle) = tower_test::mock::pair();
        let client = Client::new(service, "default");
        let desired = labels(&[(psa::ENFORCE, "baseline"), (psa::ENFORCE_VERSION, "latest")]);
        let record = Record {
            profile: "p".into(),
            generation: Some(2),
            labels: desired.clone().into(),
            declared: Some(desired.clone().into()),
            prior: Arc::new(Prior::from([
                (psa::ENFORCE.to_owned(), Some("restricted".to_owned())),
                (psa::ENFORCE_VERSION.to_owned(), None),
            ])),
            ..Default::default()
        };
        let write = LabelWrite::Apply {
            ns: "app".into(),
            changes: Vec::new(),
            drifted: Vec::new(),
            profiles: vec!["p".into()],
            record: Box::new(record.clone()),
        };
        let encoded = record.encode();
        let server = serve_one(
            handle,
            |req, body| {
                assert_eq!(req.method(), http::Method::PATCH);
                assert_eq!(req.uri().path(), "/api/v1/namespaces/app");
                let query = req.uri().query().unwrap_or_default();
                assert!(query.contains("fieldManager=pss-operator"), "{query}");
                assert!(query.contains("force=true"), "{query}");
                assert_eq!(
                    req.headers()
                        .get(http::header::CONTENT_TYPE)
                        .map(|v| v.as_bytes()),
                    Some(&b"application/apply-patch+yaml"[..])
                );
                // Only the PSA labels and the record, in the same request: no other label,
                // annotation, spec or status.
                assert_eq!(
                    body,
                    json!({
                        "apiVersion": "v1",
                        "kind": "Namespace",
                        "metadata": {"name": "app", "labels": {
                            psa::ENFORCE: "baseline",
                            psa::ENFORCE_VERSION: "latest",
                        }, "annotations": {ANNOTATION: encoded}},
                    })
                );
            },
            json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "app", "resourceVersion": "42",
                             "labels": {"team": "x", psa::ENFORCE: "baseline"},
                             "annotations": {ANNOTATION: record.encode()}},
            }),
        );
        let (applied, ()) = tokio::join!(write_labels(&client, &write), server);
        let applied = applied.expect("applied");
        assert_eq!(applied.resource_version, Some(42));
        assert_eq!(applied.labels.get("team").map(String::as_str), Some("x"));
        assert_eq!(applied.record, Some(record));
    }

    #[tokio::test]
    async fn unmarking_applies_our_labels_as_they_are_without_the_record() {
        let (service, handle) = tower_test::mock::pair();
        let client = Client::new(service, "default");
        let server = serve_one(
            handle,
            |_, body| {
                assert_eq!(
                    body["metadata"],
                    json!({"name": "app", "labels": {psa::ENFORCE: "baseline"}})
                );
            },
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}}),
        );
        let write = LabelWrite::Unmark {
            ns: "app".into(),
            keep: labels(&[(psa::ENFORCE, "baseline")]),
        };
        let (applied, ()) = tokio::join!(write_labels(&client, &write), server);
        assert_eq!(applied.expect("unmarked").record, None);
    }

    #[tokio::test]
    async fn a_release_reads_the_namespace_then_merge_patches_it_back_with_a_precondition() {
        let (service, mut handle) = tower_test::mock::pair();
        let client = Client::new(service, "default");
        let record = Record {
            profile: "p".into(),
            labels: labels(&[(psa::ENFORCE, "baseline"), (psa::WARN, "restricted")]).into(),
            declared: None,
            prior: Arc::new(Prior::from([
                (psa::ENFORCE.to_owned(), Some("restricted".to_owned())),
                (psa::WARN.to_owned(), None),
            ])),
            ..Default::default()
        };
        let ours = json!({"manager": MANAGER, "operation": "Apply", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {format!("f:{}", psa::ENFORCE): {}, format!("f:{}", psa::WARN): {}}}}});
        let creator = json!({"manager": "kubectl-create", "operation": "Update", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}});
        let server = async {
            serve_next(
                &mut handle,
                |req, _| {
                    // A list by name: namespaces are listed and watched, never read one by one.
                    assert_eq!(req.method(), http::Method::GET);
                    assert_eq!(req.uri().path(), "/api/v1/namespaces");
                    let query = req.uri().query().unwrap_or_default();
                    assert!(query.contains("fieldSelector=metadata.name%3Dapp"), "{query}");
                },
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                       "metadata": {"resourceVersion": "7"},
                       "items": [{"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                       "metadata": {"name": "app", "resourceVersion": "7",
                                    "labels": {psa::ENFORCE: "baseline", psa::WARN: "restricted", "team": "x"},
                                    "annotations": {ANNOTATION: record.encode()},
                                    "managedFields": [creator, ours]}}]}),
            )
            .await;
            serve_next(
                &mut handle,
                |req, body| {
                    assert_eq!(req.method(), http::Method::PATCH);
                    let query = req.uri().query().unwrap_or_default();
                    assert!(query.contains("fieldManager=pss-operator"), "{query}");
                    assert_eq!(
                        req.headers()
                            .get(http::header::CONTENT_TYPE)
                            .map(|v| v.as_bytes()),
                        Some(&b"application/merge-patch+json"[..])
                    );
                    assert_eq!(body["metadata"]["resourceVersion"], "7");
                    assert_eq!(
                        body["metadata"]["labels"],
                        json!({psa::ENFORCE: "restricted", psa::WARN: null})
                    );
                    assert_eq!(body["metadata"]["annotations"], json!({ANNOTATION: null}));
                    assert_eq!(
                        body["metadata"]["managedFields"][0]["manager"],
                        "kubectl-create"
                    );
                    assert_eq!(
                        body["metadata"]["managedFields"].as_array().map(Vec::len),
                        Some(1)
                    );
                },
                json!({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": "app", "resourceVersion": "8",
                                    "labels": {psa::ENFORCE: "restricted", "team": "x"}}}),
            )
            .await;
        };
        let write = LabelWrite::Release { ns: "app".into() };
        let (applied, ()) = tokio::join!(write_labels(&client, &write), server);
        let applied = applied.expect("released");
        assert_eq!(applied.resource_version, Some(8));
        assert_eq!(applied.record, None);
        let done = applied.restore.expect("what it did");
        assert_eq!(done.restored, labels(&[(psa::ENFORCE, "restricted")]));
        assert_eq!(done.removed, [psa::WARN]);
    }

    #[tokio::test]
    async fn events_wait_until_the_writer_has_taken_every_queued_write() {
        let (queue, mut receiver) = Queue::new();
        queue.push(release("a"));
        queue.push(release("b"));
        receiver.recv().await.expect("queued");
        queue.started();
        assert!(
            queue.idle().now_or_never().is_none(),
            "one write still waits"
        );
        receiver.recv().await.expect("queued");
        queue.started();
        assert!(queue.idle().now_or_never().is_some(), "none waits");
    }

    fn release(ns: &str) -> QueuedWrite {
        QueuedWrite {
            write: LabelWrite::Release { ns: ns.into() },
            uid: None,
            bulk: None,
        }
    }

    #[tokio::test]
    async fn a_failed_label_write_is_replanned_and_retried_after_its_delay() {
        let (ctx, _) = booking_context();
        ctx.shared().in_flight.insert("app".into(), None);
        book(&ctx, release("app"), Err(Error::LeadershipLost));
        {
            let shared = ctx.shared();
            assert!(
                shared.in_flight.contains_key("app"),
                "left alone until the retry"
            );
            assert!(shared.ledger.apply_errors().contains_key("app"));
            assert_eq!(shared.write_retry.last(), Some(Duration::from_secs(1)));
        }
        // The retry is due after 1 s: the namespace is free again, and marked for the pass.
        let mut waited = Duration::ZERO;
        while ctx.shared().in_flight.contains_key("app") {
            assert!(waited < Duration::from_secs(10), "no retry after 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        }
        assert_eq!(ctx.shared().dirty, Dirty::Some(["app".into()].into()));
        assert!(woken(&ctx).await);
    }

    #[tokio::test]
    async fn a_landed_write_wakes_a_pass_only_when_the_watch_already_showed_it() {
        let (ctx, mut store) = booking_context();
        let at = |rv: &str| {
            let meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("app".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            };
            watcher::Event::Apply(
                kube::core::PartialObjectMetaExt::into_response_partial::<Namespace>(meta).into(),
            )
        };
        let landed = |rv: u64| Applied {
            resource_version: Some(rv),
            labels: Labels::new(),
            record: None,
            restore: None,
        };
        // The store is older than our write: its watch event is still to come and will wake.
        store.apply_watcher_event(&at("7"));
        ctx.shared().in_flight.insert("app".into(), None);
        book(&ctx, release("app"), Ok(landed(8)));
        assert!(!ctx.shared().in_flight.contains_key("app"));
        assert_eq!(
            ctx.shared().dirty.take(),
            Dirty::Some(["app".into()].into())
        );
        assert!(!woken(&ctx).await);
        // The watch was first: the pass it woke saw the write in flight, so wake another.
        store.apply_watcher_event(&at("9"));
        ctx.shared().in_flight.insert("app".into(), None);
        book(&ctx, release("app"), Ok(landed(9)));
        assert_eq!(
            ctx.shared().dirty.take(),
            Dirty::Some(["app".into()].into())
        );
        assert!(woken(&ctx).await);
    }
}
