//! The watches: profiles and namespaces into their stores, Pods into the Pod index, workloads'
//! templates into the template index. Each marks
//! the namespaces whose inputs changed (see [`Dirty`]) and wakes the pass.

use std::collections::HashSet;
use std::sync::Arc;

use crate::operator::readable::Readable;
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::reflector;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, watcher};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::context::{Context, Dirty, Shared};
use super::namespace_store::{self, StoredNamespace};
use crate::operator::crd::PodSecurityProfile;
use crate::operator::error::Error;
use crate::operator::index::{Evaluate, Interner, Listed};
use crate::operator::pods::SlimPod;
use crate::operator::pods::WatchedPod;
use crate::operator::workloads::{Reported, WatchedWorkload, WorkloadKind, reported};

/// Feeds the profile store. A profile change re-plans every namespace; the pass finds it by
/// comparing the profiles (their status updates, our own writes, change nothing it plans from).
pub(super) async fn profiles(ctx: Arc<Context>, store: Writer<Readable<PodSecurityProfile>>) {
    watcher(
        Api::<Readable<PodSecurityProfile>>::all(ctx.client.clone()),
        ctx.watcher_config(),
    )
    .default_backoff()
    .modify(|p: &mut Readable<PodSecurityProfile>| p.managed_fields_mut().clear())
    .reflect(store)
    .for_each(|ev| {
        note(
            &ctx,
            &ev,
            |s| s.profiles_synced = true,
            |_, _| {},
            "podsecurityprofiles",
        );
        async {}
    })
    .await
}

/// Feeds the namespace store from a metadata watch, each namespace projected to what the pass
/// reads of it ([`StoredNamespace`]).
pub(super) async fn namespaces(ctx: Arc<Context>, store: Writer<StoredNamespace>) {
    let events = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(ctx.client.clone()),
        ctx.watcher_config(),
    )
    .default_backoff()
    .map_ok(namespace_store::project);
    reflector(store, events)
        .for_each(|ev| {
            let changed = |s: &mut Shared, ns: Option<&StoredNamespace>| match ns {
                Some(ns) => s.dirty.mark(&ns.name),
                None => s.dirty = Dirty::All,
            };
            note(
                &ctx,
                &ev,
                |s| s.namespaces_synced = true,
                changed,
                "namespaces",
            );
            async {}
        })
        .await
}

/// Books a watch event: the list complete, `changed` with the object that changed (`None`
/// after a relist), and wakes the pass.
fn note<K>(
    ctx: &Context,
    ev: &Result<watcher::Event<K>, watcher::Error>,
    synced: impl FnOnce(&mut Shared),
    changed: impl FnOnce(&mut Shared, Option<&K>),
    what: &str,
) {
    match ev {
        Ok(watcher::Event::InitDone) => {
            let mut shared = ctx.shared();
            synced(&mut shared);
            changed(&mut shared, None);
            drop(shared);
            // The benchmark (e2e/bench/scale.py) times the start from these lines.
            info!("list of {what} complete");
        }
        Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => return,
        Ok(watcher::Event::Apply(k) | watcher::Event::Delete(k)) => {
            changed(&mut ctx.shared(), Some(k))
        }
        Err(e) => {
            warn!(error = %e, "watching {what}");
            ctx.reconnected.notify_one();
            return;
        }
    }
    ctx.wake.notify_one();
}

/// The Pods of an initial list while they wait for it to complete, and what they share.
#[derive(Default)]
struct Waiting {
    /// In chunks of [`CHUNK`]: one growing `Vec` would hold up to twice the room it needs.
    chunks: Vec<Vec<Listed<SlimPod>>>,
    pods: Interner<SlimPod>,
    names: Interner<Box<str>>,
    /// Namespace and owner names.
    strings: HashSet<Arc<str>>,
}

const CHUNK: usize = 4096;

impl Waiting {
    fn push(&mut self, pod: Listed<SlimPod>) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push(pod),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(pod);
                self.chunks.push(chunk);
            }
        }
    }

    fn string(&mut self, s: String) -> Arc<str> {
        if let Some(shared) = self.strings.get(s.as_str()) {
            return shared.clone();
        }
        let shared: Arc<str> = s.into();
        self.strings.insert(shared.clone());
        shared
    }
}

/// Feeds the Pod index: running Pods as slim projections, the initial list in one `reset`.
pub(super) async fn pods(ctx: Arc<Context>) {
    let events = watcher(
        Api::<Readable<WatchedPod>>::all(ctx.client.clone()),
        ctx.watcher_config(),
    )
    .default_backoff();
    feed_pods(&ctx, events).await
}

async fn feed_pods(
    ctx: &Context,
    events: impl Stream<Item = Result<watcher::Event<Readable<WatchedPod>>, watcher::Error>>,
) {
    // Projections are interned as pages arrive, their container names apart, and so are the
    // namespace and owner names: until the list completes, the Pods of one template (or that
    // differ only in their containers' names) already share one allocation instead of each
    // holding a copy next to the index.
    let mut waiting = Waiting::default();
    let mut events = std::pin::pin!(events);
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Init) => waiting = Waiting::default(),
            Ok(watcher::Event::InitApply(guard)) => {
                let Some(pod) = readable(guard) else {
                    continue;
                };
                let owner = pod.controller();
                if pod.is_running()
                    && let Some((ns, name, mut slim)) = pod.into_slim()
                {
                    let names = slim.take_names();
                    let listed = Listed {
                        ns: waiting.string(ns),
                        name: name.into_boxed_str(),
                        pod: waiting.pods.intern(slim),
                        names: waiting.names.intern(names),
                        owner: owner.map(|o| waiting.string(o)),
                    };
                    waiting.push(listed);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let listed: usize = waiting.chunks.iter().map(Vec::len).sum();
                // The index's own tables take the shared values over.
                let initial = std::mem::take(&mut waiting).chunks.into_iter().flatten();
                let started = std::time::Instant::now();
                ctx.index.write().await.reset_apart(initial);
                info!(
                    running = listed,
                    index_ms = started.elapsed().as_millis() as u64,
                    "list of pods complete"
                );
                let mut shared = ctx.shared();
                relisted(&mut shared, |s| &mut s.pods_synced);
                drop(shared);
                ctx.wake.notify_one();
            }
            Ok(watcher::Event::Apply(guard)) => {
                let (ns, name) = (guard.namespace(), guard.meta().name.clone());
                let Some(pod) = readable(guard) else {
                    if let (Some(ns), Some(name)) = (ns, name) {
                        forget(ctx, &ns, &name).await;
                    }
                    continue;
                };
                let running = pod.is_running();
                let owner = pod.controller();
                let Some((ns, name, slim)) = pod.into_slim() else {
                    continue;
                };
                let changed = {
                    let mut index = ctx.index.write().await;
                    if running {
                        index.apply_owned(&ns, &name, slim, owner.as_deref())
                    } else {
                        index.delete(&ns, &name)
                    }
                };
                // Most Pod events are status updates: no pass unless a verdict moved.
                if changed {
                    ctx.mark_dirty(&ns);
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let (Some(ns), Some(name)) = (pod.namespace(), pod.meta().name.clone()) {
                    forget(ctx, &ns, &name).await;
                }
            }
            Err(e) => {
                warn!(error = %e, "watching pods");
                ctx.reconnected.notify_one();
            }
        }
    }
}

/// Books a list of Pods or templates complete. A relist re-plans every namespace; the first list
/// needs no more: the first pass that knows every list plans them all anyway (see `pass`: the
/// default `Dirty::All`, or the one forced after passes that labelled before the Pods were in),
/// and labelling passes before it would re-plan 10,000 namespaces for Pods they do not read.
fn relisted(shared: &mut Shared, synced: impl FnOnce(&mut Shared) -> &mut bool) {
    if std::mem::replace(synced(shared), true) {
        shared.dirty = Dirty::All;
    }
}

/// Takes a Pod out of the index; its namespace's plan (a `WhenCompliant` rollout waits for its
/// Pods), status and metrics follow.
async fn forget(ctx: &Context, ns: &str, name: &str) {
    if ctx.index.write().await.delete(ns, name) {
        ctx.mark_dirty(ns);
    }
}

/// The Pod, or `None` (logged) when it does not deserialize into the slim model.
fn readable(guard: Readable<WatchedPod>) -> Option<WatchedPod> {
    match guard.0 {
        Ok(pod) => Some(pod),
        Err(invalid) => {
            warn!(
                namespace = invalid.metadata.namespace.as_deref().unwrap_or_default(),
                pod = invalid.metadata.name.as_deref().unwrap_or_default(),
                error = %invalid.error,
                "pod skipped: cannot read its spec"
            );
            None
        }
    }
}

/// Feeds the template index with the reported workloads of one kind (see
/// [`crate::operator::workloads::reported`]); the initial list replaces that kind's entries.
pub(super) async fn workloads<W>(ctx: Arc<Context>)
where
    W: WatchedWorkload + serde::de::DeserializeOwned + 'static,
{
    let kind = W::KIND;
    let events = watcher(
        Api::<Readable<W>>::all(ctx.client.clone()),
        ctx.watcher_config(),
    )
    .default_backoff();
    let mut initial = Vec::new();
    let mut folded = Vec::new();
    let mut replicas = Vec::new();
    let mut events = std::pin::pin!(events);
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Init) => {
                initial.clear();
                folded.clear();
                replicas.clear();
            }
            Ok(watcher::Event::InitApply(guard)) => match template(&ctx, kind, guard) {
                Some(Reported::Template(ns, name, slim, r)) => {
                    if let Some(r) = r {
                        replicas.push((ns.clone(), name.clone(), r));
                    }
                    initial.push((ns, name, slim));
                }
                Some(Reported::Folded(ns, name, controller)) => folded.push((ns, name, controller)),
                _ => {}
            },
            Ok(watcher::Event::InitDone) => {
                let listed = initial.len();
                {
                    let mut templates = ctx.templates.write().await;
                    templates.kind_mut(kind).reset(std::mem::take(&mut initial));
                    templates.reset_folded(kind, std::mem::take(&mut folded));
                    templates.reset_replicas(kind, std::mem::take(&mut replicas));
                }
                info!(reported = listed, "list of {kind}s complete");
                let mut shared = ctx.shared();
                relisted(&mut shared, |s| &mut s.workloads_synced[kind.index()]);
                drop(shared);
                ctx.wake.notify_one();
            }
            Ok(watcher::Event::Apply(guard)) => {
                let (ns, name) = (guard.namespace(), guard.meta().name.clone());
                let reported = template(&ctx, kind, guard);
                let (Some(ns), Some(name)) = (ns, name) else {
                    continue;
                };
                let changed = {
                    let mut templates = ctx.templates.write().await;
                    // Most workload events are status updates that change neither.
                    match reported {
                        Some(Reported::Template(_, _, slim, r)) => {
                            // Replicas are shown, not judged: a change alone wakes no pass.
                            templates.set_replicas(kind, &ns, &name, r);
                            let unfolded = templates.fold(kind, &ns, &name, None);
                            templates.kind_mut(kind).apply(&ns, &name, slim) | unfolded
                        }
                        // Folded into its owner (now), or unreadable: not reported itself.
                        Some(Reported::Folded(_, _, controller)) => {
                            templates.set_replicas(kind, &ns, &name, None);
                            let folded = templates.fold(kind, &ns, &name, Some(controller));
                            templates.kind_mut(kind).delete(&ns, &name) | folded
                        }
                        _ => {
                            templates.set_replicas(kind, &ns, &name, None);
                            let unfolded = templates.fold(kind, &ns, &name, None);
                            templates.kind_mut(kind).delete(&ns, &name) | unfolded
                        }
                    }
                };
                if changed {
                    ctx.mark_dirty(&ns);
                }
            }
            Ok(watcher::Event::Delete(guard)) => {
                if let (Some(ns), Some(name)) = (guard.namespace(), guard.meta().name.clone()) {
                    let mut templates = ctx.templates.write().await;
                    templates.fold(kind, &ns, &name, None);
                    templates.set_replicas(kind, &ns, &name, None);
                    let gone = templates.kind_mut(kind).delete(&ns, &name);
                    drop(templates);
                    if gone {
                        ctx.mark_dirty(&ns);
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "watching {kind}s");
                ctx.reconnected.notify_one();
            }
        }
    }
}

/// Feeds the refusals the cluster shows: `FailedCreate` Events whose message is a PodSecurity
/// denial (a controller's Pod refused). Not waited for by the first pass: they only add the API
/// server's own words to workloads already found blocked by their template.
pub(super) async fn refusals(ctx: Arc<Context>) {
    let events = watcher(
        Api::<CoreEvent>::all(ctx.client.clone()),
        ctx.watcher_config().fields("reason=FailedCreate"),
    )
    .default_backoff();
    let mut initial = Vec::new();
    let mut events = std::pin::pin!(events);
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Init) => initial.clear(),
            Ok(watcher::Event::InitApply(e)) => initial.extend(refusal(&e)),
            Ok(watcher::Event::InitDone) => {
                let mut templates = ctx.templates.write().await;
                templates.reset_refusals(std::mem::take(&mut initial));
                drop(templates);
                ctx.wake.notify_one();
            }
            // Refusals change no plan, only what the reporter shows: a pass that re-plans
            // nothing hands it a new picture. A repeated Event (its count going up) changes nothing.
            Ok(watcher::Event::Apply(e)) => {
                if let Some((ns, object, message)) = refusal(&e)
                    && ctx
                        .templates
                        .write()
                        .await
                        .set_refusal(&ns, &object, Some(message))
                {
                    ctx.wake.notify_one();
                }
            }
            Ok(watcher::Event::Delete(e)) => {
                if let Some((ns, object, _)) = refusal(&e)
                    && ctx.templates.write().await.set_refusal(&ns, &object, None)
                {
                    ctx.wake.notify_one();
                }
            }
            Err(e) => {
                warn!(error = %e, "watching FailedCreate events");
                ctx.reconnected.notify_one();
            }
        }
    }
}

/// (namespace, `Kind/name` of the object whose Pod was refused, the API server's message) of a
/// `FailedCreate` Event that is a PodSecurity denial.
fn refusal(e: &CoreEvent) -> Option<(String, String, String)> {
    let message = e.message.as_deref()?;
    if !message.contains("violates PodSecurity") {
        return None;
    }
    let o = &e.involved_object;
    Some((
        o.namespace.clone()?,
        format!("{}/{}", o.kind.as_deref()?, o.name.as_deref()?),
        message.to_owned(),
    ))
}

/// What a watched workload reports, or `None` (logged and counted) when it does not
/// deserialize into the slim model.
fn template<W: WatchedWorkload>(
    ctx: &Context,
    kind: WorkloadKind,
    guard: Readable<W>,
) -> Option<Reported> {
    match guard.0 {
        Ok(w) => {
            let (meta, spec) = w.into_parts();
            Some(reported(kind, meta, spec))
        }
        Err(invalid) => {
            let error = Error::Unreadable {
                kind: kind.as_str(),
                namespace: invalid.metadata.namespace.unwrap_or_default(),
                name: invalid.metadata.name.unwrap_or_default(),
                reason: invalid.error,
            };
            warn!(error = %error, "workload skipped");
            ctx.metrics.error("workload", &error);
            None
        }
    }
}
