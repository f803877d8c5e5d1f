//! The I/O edge. Tasks, each on its own so they use every core:
//! - watches feed the stores (profiles, namespaces) and the Pod index, and mark the namespaces
//!   whose inputs changed (see [`Dirty`]);
//! - the *pass* (`pass_loop`) re-plans those namespaces (all of them after a relist, a profile
//!   change, or every `RESYNC`) and queues the label writes that differ (server-side apply, one
//!   field manager, only the PSA labels), drift repairs included; it never waits for a write;
//! - the *label writer* applies them, 32 in flight, and books each result as it lands;
//! - the *reporter* writes changed statuses and publishes metrics from the latest pass's picture,
//!   at most every 250 ms, computing them on a blocking thread;
//! - Events are posted in the background; a heartbeat fences writes after a standstill.
//!
//! Why one global pass rather than a per-object `Controller`: who governs a namespace depends on
//! every profile (priorities, ties), and a profile's status depends on every namespace and Pod it
//! governs, so per-object reconcilers would each need the whole picture anyway and would race on
//! it. The pass keeps the plans of all namespaces and re-plans from the stores only what changed
//! (pure and cheap: all 2,000 namespaces with 50k Pods take ~5 ms, `cargo bench --bench
//! reconcile`; a pass at 100 drifts/s re-plans ~10 of them), and only writes what differs, so
//! it stays idempotent; wake-ups are coalesced.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::core::error_boundary::InvalidObject;
use kube::core::{DeserializeGuard, Selector, SelectorExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::crd::{DeletionPolicy, FINALIZER, PodSecurityProfile, PodSecurityProfileStatus};
use super::desired::{
    Exclusions, LabelChange, Labels, NamespacePlan, NamespaceView, ProfileView, label_changes,
    plan_namespace,
};
use super::error::{Error, Result};
use super::fence::Fence;
use super::index::PodIndex;
use super::metrics::Metrics;
use super::pods::{SlimPod, WatchedPod};
use super::status::{Observed, metric_values, profile_status, unreadable_status};

/// The one field manager for labels and status.
pub const MANAGER: &str = "pss-operator";
/// Coalesces bursts (a Deployment scaling, a relist) into one pass; short, as a pass re-plans only
/// what changed.
const DEBOUNCE: Duration = Duration::from_millis(30);
const REPORT_INTERVAL: Duration = Duration::from_millis(250);
const RESYNC: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Label applies in flight. At 100 drifts/s on a 50k-Pod cluster, 8 in flight (~60-240 ms
/// each) could not keep up and repairs queued for seconds (BENCHMARKS.md, runs E/F/H).
const LABEL_WRITES_IN_FLIGHT: usize = 32;
/// Events posted at a time (they never hold up a pass).
const EVENTS_IN_FLIGHT: usize = 8;

pub struct Config {
    pub exclusions: Exclusions,
    /// Reported in Events (`reportingInstance`).
    pub identity: String,
    /// With leader election: the longest standstill after which the Lease may still be ours
    /// (see [`Fence`]).
    pub pause_limit: Option<Duration>,
}

/// Mutable state shared by the watch tasks and the pass.
#[derive(Default)]
struct State {
    /// The namespaces the next pass re-plans.
    dirty: Dirty,
    pods_synced: bool,
    profiles_synced: bool,
    namespaces_synced: bool,
    /// The labels last applied (or found already as desired) per namespace: keys in here that
    /// are no longer desired are removed by the next apply.
    last_applied: HashMap<String, Labels>,
    /// What the governing profiles declared when the labels were last as desired: an observed
    /// change while the declaration stays the same is drift (a stricter value kept under
    /// `allowStricter` and later lowered below the floor is drift too).
    last_declared: HashMap<String, Labels>,
    /// Drift corrections per profile, seeded from the stored status.
    drift: HashMap<String, i64>,
    apply_errors: BTreeMap<String, String>,
    /// What was last announced by Event, to announce changes only.
    announced_pending: HashMap<String, Vec<String>>,
    announced_conflicts: HashMap<String, Vec<String>>,
    /// The resourceVersion and labels our last label write returned, per namespace, until the
    /// namespace store has caught up with it: until then the store is older than our write, and
    /// its labels must not be mistaken for drift.
    written: HashMap<String, (u64, Labels)>,
    /// Namespaces with a label write queued, running or waiting for its retry; with the labels
    /// a drift repair restores.
    in_flight: HashMap<String, Option<Labels>>,
    /// The delay before retrying after the last failed label write; `None` after a success.
    write_retry: Option<Duration>,
    /// (generation, error) last written to unreadable profiles, to write each once.
    unreadable_written: HashMap<String, (Option<i64>, String)>,
}

impl State {
    /// Forgets the bookkeeping of namespaces that are gone.
    fn retain_namespaces(&mut self, keep: impl Fn(&str) -> bool) {
        self.last_applied.retain(|ns, _| keep(ns));
        self.last_declared.retain(|ns, _| keep(ns));
        self.apply_errors.retain(|ns, _| keep(ns));
        self.announced_pending.retain(|ns, _| keep(ns));
        self.announced_conflicts.retain(|ns, _| keep(ns));
    }
}

/// The namespaces whose inputs changed since the last pass: their labels or managedFields (the
/// namespace watch), their Pods (the Pod index), or our write on them landed or is due for a
/// retry. `All` after a relist; a pass also plans all of them when the profiles changed and
/// every `RESYNC`.
#[derive(Debug, Default, PartialEq)]
enum Dirty {
    #[default]
    All,
    Some(HashSet<String>),
}

impl Dirty {
    fn mark(&mut self, ns: &str) {
        if let Dirty::Some(set) = self
            && !set.contains(ns)
        {
            set.insert(ns.to_owned());
        }
    }

    fn take(&mut self) -> Dirty {
        std::mem::replace(self, Dirty::Some(HashSet::new()))
    }
}

pub struct Context {
    client: Client,
    /// Events go to a background poster (see [`post_events`]): a pass never waits for them.
    events: tokio::sync::mpsc::UnboundedSender<(ObjectReference, Event)>,
    metrics: Arc<Metrics>,
    config: Config,
    /// Guarded: a profile that no longer deserializes (stored before a schema change) is kept
    /// as an error and reported Degraded instead of breaking the watch.
    profiles: Store<DeserializeGuard<PodSecurityProfile>>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Apart from `state`, and async: the reporter reads it for ~10-100 ms per report (50k
    /// Pods) while passes plan beside it, and a task waiting for it must not hold up a thread
    /// the label writes need. Lock order: `index` before `state`.
    index: tokio::sync::RwLock<PodIndex<SlimPod>>,
    state: Mutex<State>,
    wake: tokio::sync::Notify,
    /// Every write checks it first.
    fence: Fence,
    /// Label writes, for [`label_writer`].
    writes: tokio::sync::mpsc::UnboundedSender<Queued>,
    /// The latest pass's picture, for [`report_loop`].
    reports: watch::Sender<Option<Arc<Report>>>,
    ready: Arc<AtomicBool>,
}

impl Context {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the index half-updated in a way that
        // matters: the next relist resets it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs until a watch ends for good (it does not: watches retry with backoff) or the future is
/// dropped. `ready` turns true after the first complete pass.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> Result<()> {
    let profiles_api: Api<PodSecurityProfile> = Api::all(client.clone());
    // Metadata only: a profile that no longer deserializes must not stop the start.
    profiles_api
        .list_metadata(&ListParams::default().limit(1))
        .await
        .map_err(|e| match e {
            kube::Error::Api(ref s) if s.code == 404 => Error::CrdNotInstalled(e),
            e => Error::Kube(e),
        })?;

    let (profiles, profiles_writer) = reflector::store();
    let (namespaces, namespaces_writer) = reflector::store();
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: Some(config.identity.clone()),
    };
    let (events, to_post) = tokio::sync::mpsc::unbounded_channel();
    let (reports, latest_report) = watch::channel(None);
    let (writes, to_write) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        fence: Fence::new(config.pause_limit),
        events,
        client: client.clone(),
        metrics,
        config,
        profiles,
        namespaces,
        index: Default::default(),
        state: Mutex::new(State::default()),
        wake: tokio::sync::Notify::new(),
        writes,
        reports,
        ready,
    });

    let profile_events = watcher(
        Api::<DeserializeGuard<PodSecurityProfile>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|p: &mut DeserializeGuard<PodSecurityProfile>| p.managed_fields_mut().clear())
    .reflect(profiles_writer);
    let namespace_events = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|n: &mut PartialObjectMeta<Namespace>| {
        // Keep only our own entry: it says which labels we own (see `owned_labels`).
        n.managed_fields_mut().retain(|f| {
            f.manager.as_deref() == Some(MANAGER) && f.operation.as_deref() == Some("Apply")
        });
        n.annotations_mut().clear();
    })
    .reflect(namespaces_writer);
    let pod_events = watcher(
        Api::<DeserializeGuard<WatchedPod>>::all(client.clone()),
        // Paginated LIST (not `streaming_lists()`): WatchList is refused by API servers older
        // than 1.34 or with the gate off, and the seed's cluster was 1.31.
        watcher::Config::default(),
    )
    .default_backoff();

    let c = ctx.clone();
    // A profile change re-plans every namespace; the pass finds it by comparing the profiles
    // (their status updates, our own writes, change nothing it plans from).
    let profiles_task = profile_events.for_each(move |ev| {
        note_sync(
            &c,
            &ev,
            |s| s.profiles_synced = true,
            |_, _| {},
            "podsecurityprofiles",
        );
        async {}
    });
    let c = ctx.clone();
    let namespaces_task = namespace_events.for_each(move |ev| {
        let changed = |s: &mut State, ns: Option<&PartialObjectMeta<Namespace>>| match ns {
            Some(ns) => s.dirty.mark(&ns.name_any()),
            None => s.dirty = Dirty::All,
        };
        note_sync(
            &c,
            &ev,
            |s| s.namespaces_synced = true,
            changed,
            "namespaces",
        );
        async {}
    });
    let c = ctx.clone();
    let pods_task = feed_pods(c, pod_events);
    // Separate tasks, so the pass, the reporter and the decoding of watch events use both cores
    // instead of taking turns in one task. Dropping the set (leadership lost) aborts them all.
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        profiles_task.await;
        warn!("profile watch ended");
    });
    tasks.spawn(async move {
        namespaces_task.await;
        warn!("namespace watch ended");
    });
    tasks.spawn(async move {
        pods_task.await;
        warn!("pod watch ended");
    });
    tasks.spawn(pass_loop(ctx.clone()));
    tasks.spawn(report_loop(ctx.clone(), latest_report));
    tasks.spawn(label_writer(ctx.clone(), to_write));
    let c = ctx.clone();
    tasks.spawn(post_events(c, client, reporter, to_post));
    let c = ctx.clone();
    tasks.spawn(async move { c.fence.heartbeat().await });
    if let Some(Err(e)) = tasks.join_next().await
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
    ctx.fence.check()
}

/// Books a watch event: the list complete, `changed` with the object that changed (`None`
/// after a relist), and wakes the pass.
fn note_sync<K>(
    ctx: &Context,
    ev: &Result<watcher::Event<K>, watcher::Error>,
    synced: impl FnOnce(&mut State),
    changed: impl FnOnce(&mut State, Option<&K>),
    what: &str,
) {
    match ev {
        Ok(watcher::Event::InitDone) => {
            let mut state = ctx.state();
            synced(&mut state);
            changed(&mut state, None);
            drop(state);
            // The benchmark (e2e/bench/scale.py) times the start from these lines.
            info!("list of {what} complete");
        }
        Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => return,
        Ok(watcher::Event::Apply(k) | watcher::Event::Delete(k)) => {
            changed(&mut ctx.state(), Some(k))
        }
        Err(e) => {
            warn!(error = %e, "watching {what}");
            return;
        }
    }
    ctx.wake.notify_one();
}

async fn feed_pods(
    ctx: Arc<Context>,
    events: impl futures::Stream<
        Item = Result<watcher::Event<DeserializeGuard<WatchedPod>>, watcher::Error>,
    >,
) {
    // Projections are interned as pages arrive: until the list completes, the Pods of one
    // template already share one allocation instead of each holding a copy next to the index.
    let mut initial: Vec<(String, String, Arc<SlimPod>)> = Vec::new();
    let mut interner = super::index::Interner::default();
    let mut events = std::pin::pin!(events);
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Init) => {
                initial.clear();
                interner = Default::default();
            }
            Ok(watcher::Event::InitApply(guard)) => {
                let Some(pod) = readable(guard) else {
                    continue;
                };
                if pod.is_running()
                    && let Some((ns, name, slim)) = pod.into_slim()
                {
                    initial.push((ns, name, interner.intern(slim)));
                }
            }
            Ok(watcher::Event::InitDone) => {
                let listed = initial.len();
                // The index's own table takes the projections over.
                interner = Default::default();
                let started = std::time::Instant::now();
                ctx.index.write().await.reset(std::mem::take(&mut initial));
                info!(
                    running = listed,
                    index_ms = started.elapsed().as_millis() as u64,
                    "list of pods complete"
                );
                let mut state = ctx.state();
                state.pods_synced = true;
                state.dirty = Dirty::All;
                drop(state);
                ctx.wake.notify_one();
            }
            Ok(watcher::Event::Apply(guard)) => {
                let (ns, name) = (guard.namespace(), guard.meta().name.clone());
                let Some(pod) = readable(guard) else {
                    if let (Some(ns), Some(name)) = (ns, name)
                        && ctx.index.write().await.delete(&ns, &name)
                    {
                        pods_changed(&ctx, &ns);
                    }
                    continue;
                };
                let running = pod.is_running();
                if let Some((ns, name, slim)) = pod.into_slim() {
                    let changed = {
                        let mut index = ctx.index.write().await;
                        if running {
                            index.apply(&ns, &name, slim)
                        } else {
                            index.delete(&ns, &name)
                        }
                    };
                    // Most Pod events are status updates: no pass unless a verdict moved.
                    if changed {
                        pods_changed(&ctx, &ns);
                    }
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let (Some(ns), Some(name)) = (pod.namespace(), pod.meta().name.clone())
                    && ctx.index.write().await.delete(&ns, &name)
                {
                    pods_changed(&ctx, &ns);
                }
            }
            Err(e) => warn!(error = %e, "watching pods"),
        }
    }
}

/// A namespace's Pods changed what the index reports: its plan (a `WhenCompliant` rollout waits
/// for them), status and metrics follow.
fn pods_changed(ctx: &Context, ns: &str) {
    ctx.state().dirty.mark(ns);
    ctx.wake.notify_one();
}

/// The Pod, or `None` (logged) when it does not deserialize into the slim model.
fn readable(guard: DeserializeGuard<WatchedPod>) -> Option<WatchedPod> {
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

async fn pass_loop(ctx: Arc<Context>) {
    let mut retry = Duration::from_secs(1);
    let mut memory = Memory::default();
    loop {
        let _ = tokio::time::timeout(RESYNC, ctx.wake.notified()).await;
        tokio::time::sleep(DEBOUNCE).await;
        {
            let s = ctx.state();
            if !(s.pods_synced && s.profiles_synced && s.namespaces_synced) {
                debug!("waiting for the initial lists");
                continue;
            }
        }
        let started = std::time::Instant::now();
        let failures = pass(&ctx, &mut memory).await;
        if !ctx.ready.swap(true, Ordering::Relaxed) {
            info!(
                failures,
                pass_ms = started.elapsed().as_millis() as u64,
                "first pass complete"
            );
        }
        if failures > 0 {
            warn!(failures, retry_in = ?retry, "some writes failed; retrying");
            let c = ctx.clone();
            let delay = retry;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                c.wake.notify_one();
            });
            retry = (retry * 2).min(MAX_RETRY);
        } else {
            retry = Duration::from_secs(1);
        }
    }
}

enum Write {
    Apply {
        ns: String,
        desired: Labels,
        /// `None` while a `WhenCompliant` rollout holds `enforce`: the labels do not carry the
        /// declaration yet, so raising `enforce` later is not drift.
        declared: Option<Labels>,
        changes: Vec<LabelChange>,
        drift: bool,
        profiles: Vec<String>,
    },
    Release {
        ns: String,
    },
}

impl Write {
    fn namespace(&self) -> &str {
        match self {
            Write::Apply { ns, .. } | Write::Release { ns } => ns,
        }
    }
}

fn namespace_ref(ns: &str, uid: Option<&String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Namespace".into()),
        name: Some(ns.into()),
        // The Event lands in the namespace itself, next to what it is about.
        namespace: Some(ns.into()),
        uid: uid.cloned(),
        ..Default::default()
    }
}

/// What passes keep between them, so that a pass re-plans only the namespaces whose inputs
/// changed (see [`Dirty`]). At 100 drifts/s a pass that re-planned all 2,000 namespaces took
/// ~80 ms of wall time under load, and every repair waited for one (BENCHMARKS.md, run T).
#[derive(Default)]
struct Memory {
    /// The profiles the plans were made from (see [`ProfileKey`]).
    profiles: Vec<ProfileKey>,
    /// When every namespace was last re-planned.
    last_full: Option<std::time::Instant>,
    plans: BTreeMap<String, NamespacePlan>,
    /// The namespaces' labels: the store's, or what our last write returned while the store
    /// has not shown it yet.
    labels: BTreeMap<String, Labels>,
    /// The PSA labels our field manager owns, per namespace (from managedFields).
    owned: HashMap<String, BTreeSet<String>>,
}

/// What a plan takes from a profile. Its status (our own writes) and resourceVersion are left
/// out: they change on every report and would re-plan every namespace each time.
#[derive(Debug, PartialEq)]
struct ProfileKey {
    name: String,
    uid: Option<String>,
    generation: Option<i64>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Memory {
    /// The plans of the namespaces a pass re-planned (`None`: all of them).
    fn replanned<'a>(
        &'a self,
        names: Option<&'a HashSet<String>>,
    ) -> Box<dyn Iterator<Item = &'a NamespacePlan> + Send + 'a> {
        match names {
            Some(names) => Box::new(names.iter().filter_map(|ns| self.plans.get(ns))),
            None => Box::new(self.plans.values()),
        }
    }

    /// A namespace that is gone.
    fn forget(&mut self, ns: &str) {
        self.plans.remove(ns);
        self.labels.remove(ns);
        self.owned.remove(ns);
    }
}

impl ProfileKey {
    fn of(p: &PodSecurityProfile) -> Self {
        ProfileKey {
            name: p.name_any(),
            uid: p.uid(),
            generation: p.metadata.generation,
            deleting: p.metadata.deletion_timestamp.is_some(),
            finalizers: p.finalizers().to_vec(),
        }
    }
}

/// One level-based pass: re-plans the namespaces whose inputs changed, queues the label writes
/// that differ (see [`label_writer`]) and hands its picture to the reporter. Returns how many
/// writes failed.
async fn pass(ctx: &Arc<Context>, memory: &mut Memory) -> usize {
    let started = std::time::Instant::now();
    let mut profiles: Vec<Arc<PodSecurityProfile>> = Vec::new();
    let mut unreadable = Vec::new();
    for guarded in ctx.profiles.state() {
        match &guarded.0 {
            Ok(p) => profiles.push(Arc::new(p.clone())),
            Err(invalid) => unreadable.push(invalid.clone()),
        }
    }
    profiles.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let keys: Vec<ProfileKey> = profiles.iter().map(|p| ProfileKey::of(p)).collect();

    let mut views: HashMap<String, std::result::Result<ProfileView, String>> = HashMap::new();
    for p in profiles
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let view = ProfileView::from_profile(p);
        if let Err(e) = &view
            && keys != memory.profiles
        {
            warn!(profile = %p.name_any(), error = %e, "invalid profile: marked Degraded, skipped");
        }
        views.insert(p.name_any(), view);
    }
    let valid: Vec<ProfileView> = views
        .values()
        .filter_map(|v| v.as_ref().ok())
        .cloned()
        .collect();

    let index = ctx.index.read().await;
    let (writes, replanned, policies) = {
        let _timer = ctx.metrics.timer("namespace");
        let mut state = ctx.state();
        for p in &profiles {
            let seeded = p.status.as_ref().map_or(0, |s| s.drift_corrections);
            state.drift.entry(p.name_any()).or_insert(seeded);
        }
        let mut dirty = state.dirty.take();
        let resync_due = memory.last_full.is_none_or(|t| t.elapsed() >= RESYNC);
        if resync_due || keys != memory.profiles {
            dirty = Dirty::All;
        }
        // Forget our write once the store shows it (or something newer); until then the store
        // is older than our write: its labels are replaced by what our write returned, and the
        // namespace gets no other write (its managedFields are old too).
        state.written.retain(|ns, (ours, _)| {
            let seen = stored_version(ctx, ns);
            let keep = seen.is_some_and(|seen| seen < *ours);
            if !keep {
                dirty.mark(ns);
            }
            keep
        });
        // `None`: all of them.
        let replanned: Option<HashSet<String>> = match dirty {
            Dirty::All => {
                memory.last_full = Some(std::time::Instant::now());
                memory.profiles = keys;
                memory.plans.clear();
                memory.labels.clear();
                memory.owned.clear();
                for n in ctx.namespaces.state() {
                    replan(ctx, &mut state, memory, &valid, &index, &n);
                }
                None
            }
            Dirty::Some(names) => {
                let mut gone = HashSet::new();
                for ns in &names {
                    match stored_namespace(ctx, ns) {
                        Some(n) => replan(ctx, &mut state, memory, &valid, &index, &n),
                        None => {
                            memory.forget(ns);
                            gone.insert(ns.as_str());
                        }
                    }
                }
                if !gone.is_empty() {
                    state.retain_namespaces(|ns| !gone.contains(ns));
                }
                Some(names)
            }
        };
        let plans = &memory.plans;
        if replanned.is_none() {
            state.retain_namespaces(|ns| plans.contains_key(ns));
        }
        let is_replanned = |ns: &str| replanned.as_ref().is_none_or(|r| r.contains(ns));
        // The policies the index checks Pods against, where they changed.
        let policies: Vec<(String, crate::pss::Policy)> = memory
            .replanned(replanned.as_ref())
            .filter(|p| index.policy(&p.name) != p.policy)
            .map(|p| (p.name.clone(), p.policy))
            .collect();
        let busy: HashSet<String> = state
            .written
            .keys()
            .chain(state.in_flight.keys())
            .cloned()
            .collect();
        let writes = label_writes(
            &mut state,
            plans,
            &memory.labels,
            &profiles,
            &ctx.config.exclusions,
            &|ns| busy.contains(ns) || !is_replanned(ns),
            &memory.owned,
        );
        for w in &writes {
            // A drift being repaired is reported as repaired, so Ready does not flap for the
            // moment the repair takes (a failed repair shows as ApplyFailed instead).
            let repairing = match w {
                Write::Apply {
                    drift: true,
                    desired,
                    ..
                } => Some(desired.clone()),
                _ => None,
            };
            state.in_flight.insert(w.namespace().to_owned(), repairing);
        }
        (writes, replanned, policies)
    };
    drop(index);
    if !policies.is_empty() || replanned.is_none() {
        let mut index = ctx.index.write().await;
        for (ns, policy) in policies {
            index.set_policy(&ns, policy);
        }
        if replanned.is_none() {
            index.retain_policies(|ns| memory.plans.contains_key(ns));
        }
    }
    let planned = started.elapsed();

    announce(ctx, memory.replanned(replanned.as_ref())).await;
    if !writes.is_empty() {
        debug!(
            writes = writes.len(),
            replanned = replanned.as_ref().map_or(memory.plans.len(), HashSet::len),
            plan_ms = planned.as_millis() as u64,
            "label writes queued"
        );
    }
    for w in writes {
        let uid = namespace_uid(ctx, w.namespace());
        let before = memory
            .labels
            .get(w.namespace())
            .cloned()
            .unwrap_or_default();
        let _ = ctx.writes.send(Queued {
            write: w,
            uid,
            before,
        });
    }

    // What the reporter shows: the labels, with what drift repairs in flight restore.
    let mut observed = memory.labels.clone();
    for (ns, repairing) in &ctx.state().in_flight {
        if let (Some(labels), Some(o)) = (repairing, observed.get_mut(ns)) {
            *o = labels.clone();
        }
    }
    // Released namespaces are known from the store (we no longer own labels there), so a
    // finalizer goes on the pass after the last release landed.
    let failures = finalizers(ctx, &profiles, &memory.plans, &observed, &memory.owned).await;

    ctx.reports.send_replace(Some(Arc::new(Report {
        profiles,
        views,
        unreadable,
        plans: memory.plans.clone(),
        observed,
    })));
    failures
}

/// Plans one namespace from the store's object (or our write the store has not shown yet).
fn replan(
    ctx: &Context,
    state: &mut State,
    memory: &mut Memory,
    profiles: &[ProfileView],
    index: &PodIndex<SlimPod>,
    n: &PartialObjectMeta<Namespace>,
) {
    let name = n.name_any();
    let labels = match state.written.get(&name) {
        Some((_, ours)) => ours.clone(),
        None => n.labels().clone(),
    };
    let view = NamespaceView { name, labels };
    let plan = plan_namespace(profiles, &view, &ctx.config.exclusions, &|ns, lv| {
        index.blocking(ns, lv)
    });
    memory
        .owned
        .insert(view.name.clone(), owned_labels(&n.metadata.managed_fields));
    memory.plans.insert(view.name.clone(), plan);
    memory.labels.insert(view.name, view.labels);
}

fn stored_namespace(ctx: &Context, ns: &str) -> Option<Arc<PartialObjectMeta<Namespace>>> {
    ctx.namespaces.get(&reflector::ObjectRef::new(ns))
}

/// The resourceVersion of the namespace as the store has it.
fn stored_version(ctx: &Context, ns: &str) -> Option<u64> {
    stored_namespace(ctx, ns).and_then(|n| resource_version(n.resource_version()))
}

fn namespace_uid(ctx: &Context, ns: &str) -> Option<String> {
    stored_namespace(ctx, ns).and_then(|n| n.uid())
}

/// A label write with what its Events need.
struct Queued {
    write: Write,
    uid: Option<String>,
    /// The namespace's labels when the write was planned.
    before: Labels,
}

/// Applies queued label writes, `LABEL_WRITES_IN_FLIGHT` at a time, and books each result as it
/// lands. Passes never wait for writes: at 100 drifts/s a pass that waited for its slowest
/// write made every later repair wait for it too.
async fn label_writer(ctx: Arc<Context>, queue: tokio::sync::mpsc::UnboundedReceiver<Queued>) {
    futures::stream::unfold(queue, |mut q| async move { q.recv().await.map(|w| (w, q)) })
        .for_each_concurrent(LABEL_WRITES_IN_FLIGHT, |queued| {
            let ctx = ctx.clone();
            async move {
                let result = match ctx.fence.check() {
                    Ok(()) => write_labels(&ctx.client, &queued.write).await,
                    Err(e) => Err(e),
                };
                written(&ctx, queued, result).await;
            }
        })
        .await;
}

/// Books one label write: what it left, drift counts, Events; failures are retried by a later
/// pass after a growing delay.
async fn written(ctx: &Arc<Context>, queued: Queued, result: Result<Written>) {
    let Queued { write, uid, before } = queued;
    let ns = write.namespace().to_owned();
    match result {
        Ok(written) => {
            let ours = written.resource_version;
            {
                let mut state = ctx.state();
                state.in_flight.remove(&ns);
                state.apply_errors.remove(&ns);
                state.write_retry = None;
                state.dirty.mark(&ns);
                if let Some(rv) = ours {
                    state
                        .written
                        .insert(ns.clone(), (rv, written.labels.clone()));
                }
            }
            after_write(ctx, write, uid.as_ref(), Some(&before), written.labels).await;
            // The namespace watch delivers our write, usually after this, and wakes the next
            // pass. When it came first, the pass it woke found the namespace still in flight:
            // wake one now, or the drift count and the namespace's plan would wait for the next
            // event. (A wake per landed write kept passes running back to back.)
            let seen = stored_version(ctx, &ns);
            if ours.is_none_or(|ours| seen.is_some_and(|seen| seen >= ours)) {
                ctx.wake.notify_one();
            }
        }
        Err(e) => {
            warn!(namespace = %ns, error = %e, "writing labels");
            ctx.metrics.error("namespace", &e);
            // The namespace stays marked in flight until its retry is due, so the passes in
            // between leave it alone.
            let delay = {
                let mut state = ctx.state();
                state.apply_errors.insert(ns.clone(), e.to_string());
                let delay = state
                    .write_retry
                    .map_or(Duration::from_secs(1), |d| (d * 2).min(MAX_RETRY));
                state.write_retry = Some(delay);
                delay
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut state = ctx.state();
                state.in_flight.remove(&ns);
                state.dirty.mark(&ns);
                drop(state);
                ctx.wake.notify_one();
            });
        }
    }
}

/// One pass's picture of profiles and namespaces, for the reporter.
struct Report {
    profiles: Vec<Arc<PodSecurityProfile>>,
    views: HashMap<String, std::result::Result<ProfileView, String>>,
    unreadable: Vec<InvalidObject>,
    plans: BTreeMap<String, NamespacePlan>,
    /// The namespaces' labels: the store's, or what our last write returned while the store
    /// has not shown it yet, or what a drift repair in flight restores.
    observed: BTreeMap<String, Labels>,
}

/// Writes statuses and publishes metrics from the latest pass's report. Runs beside the passes:
/// at 50k Pods computing them takes ~100-250 ms, which a label repair must not wait for. Reports
/// that arrive while one is being written are coalesced into the newest.
async fn report_loop(ctx: Arc<Context>, mut reports: watch::Receiver<Option<Arc<Report>>>) {
    let mut retry = Duration::from_secs(1);
    while reports.changed().await.is_ok() {
        // At most one report per REPORT_INTERVAL: passes can run several times a second (100
        // drifts/s) and each report recomputes every status and metric.
        let next = tokio::time::Instant::now() + REPORT_INTERVAL;
        let Some(latest) = reports.borrow_and_update().clone() else {
            continue;
        };
        let started = std::time::Instant::now();
        let failures = report(&ctx, &latest).await;
        debug!(
            report_ms = started.elapsed().as_millis() as u64,
            "status and metrics reported"
        );
        if failures > 0 {
            warn!(failures, retry_in = ?retry, "some status writes failed; retrying");
            tokio::time::sleep(retry).await;
            reports.mark_changed();
            retry = (retry * 2).min(MAX_RETRY);
        } else {
            retry = Duration::from_secs(1);
        }
        tokio::time::sleep_until(next).await;
    }
}

/// Statuses and metrics of one report. Returns how many writes failed.
async fn report(ctx: &Arc<Context>, r: &Arc<Report>) -> usize {
    let mut failures = 0;
    let _timer = ctx.metrics.timer("podsecurityprofile");
    let now = Time(
        Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()),
    );
    // Computed on a blocking thread: at 50k Pods it takes ~20 ms of CPU (more under load), which
    // the label writes and the watches must not wait for.
    let (drift, apply_errors) = {
        let state = ctx.state();
        (state.drift.clone(), state.apply_errors.clone())
    };
    let computed = {
        let (ctx, r, now) = (ctx.clone(), r.clone(), now.clone());
        tokio::task::spawn_blocking(move || {
            let index = ctx.index.blocking_read();
            let obs = Observed {
                plans: &r.plans,
                labels: &r.observed,
                index: &index,
                drift: &drift,
                apply_errors: &apply_errors,
            };
            let statuses: Vec<_> = r
                .profiles
                .iter()
                .filter_map(|p| {
                    let view = r.views.get(&p.name_any())?;
                    let status =
                        profile_status(p, view.as_ref().map_err(String::as_str), &obs, &now);
                    (p.status.as_ref() != Some(&status)).then(|| (p.name_any(), status))
                })
                .collect();
            (statuses, metric_values(&obs))
        })
        .await
    };
    let (statuses, values) = match computed {
        Ok(computed) => computed,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => return failures,
    };
    let mut unreadable_statuses = Vec::new();
    {
        let mut state = ctx.state();
        let names: HashSet<String> = r
            .unreadable
            .iter()
            .filter_map(|u| u.metadata.name.clone())
            .collect();
        state.unreadable_written.retain(|n, _| names.contains(n));
        for invalid in &r.unreadable {
            let Some(name) = invalid.metadata.name.clone() else {
                continue;
            };
            let key = (invalid.metadata.generation, invalid.error.clone());
            if state.unreadable_written.get(&name) != Some(&key) {
                warn!(profile = %name, error = %invalid.error, "profile cannot be read: marked Degraded, skipped");
                let status = unreadable_status(invalid.metadata.generation, &invalid.error, &now);
                unreadable_statuses.push((name, key, status));
            }
        }
    }
    let profile_names: HashSet<String> = r.profiles.iter().map(|p| p.name_any()).collect();
    ctx.metrics.publish(&values, |ns, profile| {
        r.plans.contains_key(ns) && profile_names.contains(profile)
    });
    if ctx.fence.check().is_err() {
        return failures;
    }
    let api: Api<PodSecurityProfile> = Api::all(ctx.client.clone());
    for (name, status) in statuses {
        let result = apply_status(&api, &name, &status).await;
        failures += status_written(ctx, &name, result);
    }
    // Server-side apply needs the stored object to match the schema, which an unreadable one
    // does not: a merge patch of the status still works.
    for (name, key, status) in unreadable_statuses {
        let patch = json!({ "status": status });
        let result = Api::<DeserializeGuard<PodSecurityProfile>>::all(ctx.client.clone())
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        if status_written(ctx, &name, result) == 0 {
            ctx.state().unreadable_written.insert(name, key);
        } else {
            failures += 1;
        }
    }
    failures
}

/// Remembers what the governing profiles declare once the labels carry it in full.
fn remember_declared(state: &mut State, plan: &NamespacePlan) {
    if plan.pending.is_none() {
        if state.last_declared.get(&plan.name) != Some(&plan.declared) {
            state
                .last_declared
                .insert(plan.name.clone(), plan.declared.clone());
        }
    } else {
        state.last_declared.remove(&plan.name);
    }
}

/// Server-side applies the status subresource (only `status`, our field manager).
async fn apply_status(
    api: &Api<PodSecurityProfile>,
    name: &str,
    status: &PodSecurityProfileStatus,
) -> kube::Result<PodSecurityProfile> {
    let patch = json!({
        "apiVersion": "pss-operator.io/v1alpha1",
        "kind": "PodSecurityProfile",
        "status": status,
    });
    let params = PatchParams::apply(MANAGER).force();
    api.patch_status(name, &params, &Patch::Apply(&patch)).await
}

/// Logs and counts a status write; returns 1 if it failed.
fn status_written<T>(ctx: &Context, name: &str, result: kube::Result<T>) -> usize {
    match result {
        Ok(_) => {
            debug!(profile = %name, "status written");
            0
        }
        Err(e) => {
            let e = Error::Kube(e);
            warn!(profile = %name, error = %e, "writing status");
            ctx.metrics.error("podsecurityprofile", &e);
            1
        }
    }
}

/// Decides the label writes of this pass from the plans and what is observed.
fn label_writes(
    state: &mut State,
    plans: &BTreeMap<String, NamespacePlan>,
    observed: &BTreeMap<String, Labels>,
    profiles: &[Arc<PodSecurityProfile>],
    exclusions: &Exclusions,
    skip: &dyn Fn(&str) -> bool,
    owned: &HashMap<String, BTreeSet<String>>,
) -> Vec<Write> {
    let mut writes = Vec::new();
    let empty = Labels::new();
    for plan in plans.values().filter(|p| p.write && !skip(&p.name)) {
        let found = observed.get(&plan.name).unwrap_or(&empty);
        let changes = label_changes(found, &plan.desired);
        let last = state.last_applied.get(&plan.name);
        // Labels we own but no longer want (a mode dropped from the profile): an apply without
        // them removes them. Known from managedFields, so it survives restarts.
        let dropped = owned
            .get(&plan.name)
            .into_iter()
            .flatten()
            .chain(last.into_iter().flat_map(|l| l.keys()))
            .any(|k| !plan.desired.contains_key(k));
        if changes.is_empty() && !dropped {
            // Copied only when it changed: every pass meets ~all namespaces converged, and two
            // label-map copies per namespace per pass were most of a pass's allocations.
            if last != Some(&plan.desired) {
                state
                    .last_applied
                    .insert(plan.name.clone(), plan.desired.clone());
            }
            remember_declared(state, plan);
            continue;
        }
        // Drift: the declaration is unchanged and a label now differs from the value the
        // namespace had when we last applied or confirmed it. A policy change that meets
        // untouched labels (allowStricter turned off, a WhenCompliant rollout completing) is not.
        let drift = state.last_declared.get(&plan.name) == Some(&plan.declared)
            && last.is_some_and(|applied| {
                changes
                    .iter()
                    .any(|c| applied.get(&c.label) != c.found.as_ref())
            });
        writes.push(Write::Apply {
            ns: plan.name.clone(),
            desired: plan.desired.clone(),
            declared: plan.pending.is_none().then(|| plan.declared.clone()),
            changes,
            drift,
            profiles: plan.governed_by.clone(),
        });
    }
    // Profiles being deleted with `deletionPolicy: Remove`: take our labels off the namespaces
    // they selected that no other profile governs now.
    for p in profiles.iter().filter(|p| releasing(p)) {
        for ns in release_targets(p, plans, observed, exclusions, owned) {
            if !skip(ns)
                && !writes
                    .iter()
                    .any(|w| matches!(w, Write::Release { ns: n } if n == ns))
            {
                writes.push(Write::Release { ns: ns.to_owned() });
            }
        }
    }
    writes
}

/// The label keys our field manager owns by server-side apply, from a namespace's managedFields.
fn owned_labels(
    entries: &Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry>>,
) -> BTreeSet<String> {
    entries
        .iter()
        .flatten()
        .filter(|f| {
            f.manager.as_deref() == Some(MANAGER) && f.operation.as_deref() == Some("Apply")
        })
        .filter_map(|f| {
            f.fields_v1
                .as_ref()?
                .0
                .get("f:metadata")?
                .get("f:labels")?
                .as_object()
        })
        .flat_map(|labels| labels.keys())
        .filter_map(|k| k.strip_prefix("f:"))
        .map(str::to_owned)
        .collect()
}

/// A profile being deleted that must take its labels off first.
fn releasing(p: &PodSecurityProfile) -> bool {
    p.metadata.deletion_timestamp.is_some()
        && p.spec.deletion_policy == DeletionPolicy::Remove
        && p.finalizers().iter().any(|f| f == FINALIZER)
}

/// The namespaces a deleted `Remove` profile selects that no profile governs any more and where
/// we still own labels.
fn release_targets<'a>(
    p: &PodSecurityProfile,
    plans: &'a BTreeMap<String, NamespacePlan>,
    observed: &BTreeMap<String, Labels>,
    exclusions: &Exclusions,
    owned: &HashMap<String, BTreeSet<String>>,
) -> Vec<&'a str> {
    let Ok(selector) = Selector::try_from(p.spec.namespace_selector.clone()) else {
        return Vec::new();
    };
    plans
        .values()
        .filter(|plan| {
            plan.governed_by.is_empty()
                && !exclusions.contains(&plan.name)
                && owned.get(&plan.name).is_some_and(|o| !o.is_empty())
                && observed
                    .get(&plan.name)
                    .is_some_and(|labels| selector.matches(labels))
        })
        .map(|plan| plan.name.as_str())
        .collect()
}

/// What a label write left on the namespace.
struct Written {
    resource_version: Option<u64>,
    labels: Labels,
}

async fn write_labels(client: &Client, w: &Write) -> Result<Written> {
    let (ns, labels) = match w {
        Write::Apply { ns, desired, .. } => (ns, desired.clone()),
        // Applying no labels under our manager removes the ones only we own.
        Write::Release { ns } => (ns, Labels::new()),
    };
    let patch = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": ns, "labels": labels },
    });
    let written = Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(Written {
        resource_version: resource_version(written.resource_version()),
        labels: written.labels().clone(),
    })
}

/// Resource versions are opaque to clients in general, but kube-apiserver's are etcd revisions:
/// numbers that only grow. Anything else is treated as unknown (never stale).
fn resource_version(rv: Option<String>) -> Option<u64> {
    rv?.parse().ok()
}

async fn after_write(
    ctx: &Context,
    w: Write,
    uid: Option<&String>,
    before: Option<&Labels>,
    after: Labels,
) {
    match w {
        Write::Apply {
            ns,
            desired,
            declared,
            changes,
            drift,
            profiles,
        } => {
            let primary = profiles.first().cloned().unwrap_or_default();
            {
                let mut state = ctx.state();
                state.last_applied.insert(ns.clone(), desired);
                match declared {
                    Some(d) => state.last_declared.insert(ns.clone(), d),
                    None => state.last_declared.remove(&ns),
                };
                if drift {
                    for p in &profiles {
                        *state.drift.entry(p.clone()).or_default() += changes.len() as i64;
                    }
                }
            }
            let reference = namespace_ref(&ns, uid);
            if drift {
                for c in &changes {
                    ctx.metrics.drift(&ns, &primary, &c.label);
                    let found = c
                        .found
                        .as_deref()
                        .map_or("<removed>".to_owned(), |v| format!("{v:?}"));
                    info!(namespace = %ns, profile = %primary, label = %c.label, found = %found, restored = %c.want, "drift repaired");
                    publish(
                        ctx,
                        &reference,
                        EventType::Warning,
                        "LabelDriftRepaired",
                        format!(
                            "label {} was {found}, restored to {:?} (profile {primary})",
                            c.label, c.want
                        ),
                    )
                    .await;
                }
            } else if !changes.is_empty() {
                let text: Vec<String> = changes
                    .iter()
                    .map(|c| format!("{}={}", c.label, c.want))
                    .collect();
                info!(namespace = %ns, profile = %primary, labels = %text.join(","), "labels applied");
                publish(
                    ctx,
                    &reference,
                    EventType::Normal,
                    "LabelsApplied",
                    format!("profile {primary} applied {}", text.join(", ")),
                )
                .await;
            }
        }
        Write::Release { ns } => {
            ctx.state().last_applied.remove(&ns);
            let psa = |l: &Labels| -> Labels {
                l.iter()
                    .filter(|(k, _)| k.starts_with(crate::pss::level::labels::PREFIX))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            let removed: Vec<String> = before
                .map(psa)
                .unwrap_or_default()
                .into_keys()
                .filter(|k| !after.contains_key(k))
                .collect();
            if removed.is_empty() {
                return;
            }
            info!(namespace = %ns, labels = %removed.join(","), "labels removed (deletionPolicy Remove)");
            publish(
                ctx,
                &namespace_ref(&ns, uid),
                EventType::Normal,
                "LabelsRemoved",
                format!(
                    "the profile was deleted with deletionPolicy Remove: removed {}",
                    removed.join(", ")
                ),
            )
            .await;
        }
    }
}

/// Events for rollouts that start waiting and for new conflicts; each announced once.
async fn announce(ctx: &Context, plans: impl Iterator<Item = &NamespacePlan>) {
    let mut events = Vec::new();
    {
        let mut state = ctx.state();
        for plan in plans {
            match &plan.pending {
                Some(p) if state.announced_pending.get(&plan.name) != Some(&p.blocking) => {
                    state
                        .announced_pending
                        .insert(plan.name.clone(), p.blocking.clone());
                    let shown: Vec<&str> = p.blocking.iter().take(10).map(String::as_str).collect();
                    events.push((
                        plan.name.clone(),
                        EventType::Normal,
                        "RolloutPending",
                        format!(
                            "enforce={} waits for {} running Pods that violate it: {}",
                            p.target,
                            p.blocking.len(),
                            shown.join(", ")
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    state.announced_pending.remove(&plan.name);
                }
            }
            if plan.conflicted() {
                if state.announced_conflicts.get(&plan.name) != Some(&plan.governed_by) {
                    state
                        .announced_conflicts
                        .insert(plan.name.clone(), plan.governed_by.clone());
                    events.push((
                        plan.name.clone(),
                        EventType::Warning,
                        "ProfileConflict",
                        format!(
                            "profiles {} select this namespace with the same priority; the most restrictive level per mode applies",
                            plan.governed_by.join(", ")
                        ),
                    ));
                }
            } else {
                state.announced_conflicts.remove(&plan.name);
            }
        }
    }
    for (ns, type_, reason, note) in events {
        let uid = namespace_uid(ctx, &ns);
        publish(ctx, &namespace_ref(&ns, uid.as_ref()), type_, reason, note).await;
    }
}

async fn publish(
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
    // Queued, not awaited: at 100 drifts/s (or 1,800 namespaces labelled at start) posting each
    // Event inside the pass made every later repair wait for the Events of the earlier ones.
    let _ = ctx.events.send((reference.clone(), event));
}

/// Posts queued Events, up to `EVENTS_IN_FLIGHT` at a time.
async fn post_events(
    ctx: Arc<Context>,
    client: Client,
    reporter: Reporter,
    queue: tokio::sync::mpsc::UnboundedReceiver<(ObjectReference, Event)>,
) {
    futures::stream::unfold(queue, |mut q| async move { q.recv().await.map(|e| (e, q)) })
        .for_each_concurrent(EVENTS_IN_FLIGHT, |(reference, event)| {
            // A fresh recorder per event: a shared one folds events with the same reason into
            // one series and keeps the first note, which would hide which label/value a later
            // drift was about. These events are only emitted on changes: nothing to fold.
            let recorder = Recorder::new(client.clone(), reporter.clone());
            let fenced = ctx.fence.check().is_err();
            async move {
                if fenced {
                    return;
                }
                if let Err(e) = recorder.publish(&event, &reference).await {
                    warn!(error = %e, reason = %event.reason, "publishing event");
                }
            }
        })
        .await;
}

/// Keeps our finalizer exactly on profiles with `deletionPolicy: Remove`, and lets deleted ones
/// go once their labels are off. Returns the number of failed writes.
async fn finalizers(
    ctx: &Context,
    profiles: &[Arc<PodSecurityProfile>],
    plans: &BTreeMap<String, NamespacePlan>,
    observed: &BTreeMap<String, Labels>,
    owned: &HashMap<String, BTreeSet<String>>,
) -> usize {
    let api: Api<PodSecurityProfile> = Api::all(ctx.client.clone());
    let mut failures = 0;
    if ctx.fence.check().is_err() {
        return failures;
    }
    for p in profiles {
        let has = p.finalizers().iter().any(|f| f == FINALIZER);
        let deleting = p.metadata.deletion_timestamp.is_some();
        let wants = !deleting && p.spec.deletion_policy == DeletionPolicy::Remove;
        if has == wants {
            continue;
        }
        // Hold on while any namespace to release still carries labels we own (the store shows
        // our release landed; a failed release is retried by a later pass).
        if releasing(p)
            && !release_targets(p, plans, observed, &ctx.config.exclusions, owned).is_empty()
        {
            continue;
        }
        let mut list: Vec<String> = p
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        if wants {
            list.push(FINALIZER.into());
        }
        let patch = json!({
            "metadata": { "finalizers": list, "resourceVersion": p.resource_version() }
        });
        match api
            .patch(
                &p.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => info!(profile = %p.name_any(), added = wants, "finalizer updated"),
            Err(e) => {
                let e = Error::Kube(e);
                failures += 1;
                warn!(profile = %p.name_any(), error = %e, "updating finalizer");
                ctx.metrics.error("podsecurityprofile", &e);
            }
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{LevelName, LevelSpec, PodSecurityProfileSpec};
    use crate::operator::desired::plan;
    use crate::pss::level::labels as psa;

    fn profile(name: &str, policy: DeletionPolicy, deleting: bool) -> Arc<PodSecurityProfile> {
        let mut p = PodSecurityProfile::new(
            name,
            PodSecurityProfileSpec {
                enforce: Some(LevelSpec {
                    level: Some(LevelName::Baseline),
                    version: None,
                }),
                deletion_policy: policy,
                ..Default::default()
            },
        );
        if deleting {
            p.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
            p.metadata.finalizers = Some(vec![FINALIZER.into()]);
        }
        Arc::new(p)
    }

    fn plans_for(
        profiles: &[Arc<PodSecurityProfile>],
        ns: &[(&str, Labels)],
    ) -> BTreeMap<String, NamespacePlan> {
        let views: Vec<ProfileView> = profiles
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| ProfileView::from_profile(p).ok())
            .collect();
        let namespaces: Vec<NamespaceView> = ns
            .iter()
            .map(|(n, l)| NamespaceView {
                name: n.to_string(),
                labels: l.clone(),
            })
            .collect();
        plan(
            &views,
            &namespaces,
            &Exclusions::new(Exclusions::DEFAULT),
            &|_, _| Vec::new(),
        )
    }

    fn applies(writes: &[Write]) -> Vec<(&str, bool)> {
        writes
            .iter()
            .filter_map(|w| match w {
                Write::Apply { ns, drift, .. } => Some((ns.as_str(), *drift)),
                Write::Release { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_pass_takes_the_dirty_namespaces_and_starts_with_all() {
        let mut state = State::default();
        assert_eq!(
            state.dirty.take(),
            Dirty::All,
            "the first pass plans everything"
        );
        assert_eq!(state.dirty.take(), Dirty::Some(HashSet::new()));
        state.dirty.mark("a");
        state.dirty.mark("b");
        state.dirty.mark("a");
        assert_eq!(
            state.dirty.take(),
            Dirty::Some(["a".into(), "b".into()].into())
        );
        // A relist marks everything; single namespaces marked after it change nothing.
        state.dirty = Dirty::All;
        state.dirty.mark("a");
        assert_eq!(state.dirty.take(), Dirty::All);
    }

    #[test]
    fn our_status_writes_do_not_replan_every_namespace_a_spec_change_does() {
        let p = profile("p", DeletionPolicy::Retain, false);
        let key = ProfileKey::of(&p);
        let mut with_status = (*p).clone();
        with_status.status = Some(PodSecurityProfileStatus {
            drift_corrections: 3,
            ..Default::default()
        });
        with_status.metadata.resource_version = Some("42".into());
        assert_eq!(ProfileKey::of(&with_status), key);
        let mut edited = (*p).clone();
        edited.metadata.generation = Some(edited.metadata.generation.unwrap_or(1) + 1);
        assert_ne!(ProfileKey::of(&edited), key);
        let deleting = profile("p", DeletionPolicy::Retain, true);
        assert_ne!(ProfileKey::of(&deleting), key);
    }

    #[test]
    fn first_application_is_not_drift_a_later_change_is() {
        let profiles = vec![profile("p", DeletionPolicy::Retain, false)];
        let mut state = State::default();
        let bare = [("app", Labels::new())];
        let plans = plans_for(&profiles, &bare);
        let observed: BTreeMap<String, Labels> = bare
            .iter()
            .map(|(n, l)| (n.to_string(), l.clone()))
            .collect();
        let excl = Exclusions::new(Exclusions::DEFAULT);
        let writes = label_writes(
            &mut state,
            &plans,
            &observed,
            &profiles,
            &excl,
            &|_| false,
            &HashMap::new(),
        );
        assert_eq!(applies(&writes), [("app", false)]);
        // The apply succeeded: remembered.
        state
            .last_applied
            .insert("app".into(), plans["app"].desired.clone());
        state
            .last_declared
            .insert("app".into(), plans["app"].declared.clone());

        // The namespace store has not caught up with our write yet: its old labels are not drift.
        let stale: HashSet<String> = ["app".to_owned()].into();
        assert!(
            label_writes(
                &mut state,
                &plans,
                &observed,
                &profiles,
                &excl,
                &|ns| stale.contains(ns),
                &HashMap::new()
            )
            .is_empty()
        );

        // Converged: nothing to write.
        let converged: BTreeMap<String, Labels> =
            [("app".to_owned(), plans["app"].desired.clone())].into();
        assert!(
            label_writes(
                &mut state,
                &plans,
                &converged,
                &profiles,
                &excl,
                &|_| false,
                &HashMap::new()
            )
            .is_empty()
        );

        // Someone removes the enforce label: drift.
        let mut edited = plans["app"].desired.clone();
        edited.remove(psa::ENFORCE);
        let drifted: BTreeMap<String, Labels> = [("app".to_owned(), edited)].into();
        let writes = label_writes(
            &mut state,
            &plans,
            &drifted,
            &profiles,
            &excl,
            &|_| false,
            &HashMap::new(),
        );
        assert_eq!(applies(&writes), [("app", true)]);
        let Write::Apply { changes, .. } = &writes[0] else {
            unreachable!("an apply")
        };
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].label, psa::ENFORCE);
        assert_eq!(changes[0].found, None);
    }

    #[test]
    fn a_kept_stricter_value_lowered_below_the_floor_is_drift() {
        let mut p = (*profile("p", DeletionPolicy::Retain, false)).clone();
        p.spec.allow_stricter = true;
        let profiles = vec![Arc::new(p)];
        let excl = Exclusions::new(Exclusions::DEFAULT);
        let none = |_: &str| false;
        let owned = HashMap::new();
        let mut state = State::default();
        let ns = |enforce: &str| {
            let labels: Labels = [
                (psa::ENFORCE.to_owned(), enforce.to_owned()),
                (psa::ENFORCE_VERSION.to_owned(), "latest".to_owned()),
            ]
            .into();
            [("app", labels)]
        };
        let observed = |n: &[(&str, Labels)]| -> BTreeMap<String, Labels> {
            n.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
        };
        // Someone raised it to restricted: kept, nothing to write, remembered.
        let stricter = ns("restricted");
        let plans = plans_for(&profiles, &stricter);
        let w = label_writes(
            &mut state,
            &plans,
            &observed(&stricter),
            &profiles,
            &excl,
            &none,
            &owned,
        );
        assert!(w.is_empty());
        // Then lowered to privileged: below the floor, and the profile did not change: drift.
        let lowered = ns("privileged");
        let plans = plans_for(&profiles, &lowered);
        let w = label_writes(
            &mut state,
            &plans,
            &observed(&lowered),
            &profiles,
            &excl,
            &none,
            &owned,
        );
        assert_eq!(applies(&w), [("app", true)]);
    }

    #[test]
    fn turning_allow_stricter_off_is_an_application_not_drift() {
        let mut p = (*profile("p", DeletionPolicy::Retain, false)).clone();
        p.spec.allow_stricter = true;
        let excl = Exclusions::new(Exclusions::DEFAULT);
        let (none, owned) = (|_: &str| false, HashMap::new());
        let mut state = State::default();
        let labels: Labels = [
            (psa::ENFORCE.to_owned(), "restricted".to_owned()),
            (psa::ENFORCE_VERSION.to_owned(), "latest".to_owned()),
        ]
        .into();
        let stricter = [("app", labels.clone())];
        let observed: BTreeMap<String, Labels> = [("app".to_owned(), labels)].into();
        // A stricter value kept under allowStricter: nothing to write, remembered.
        let profiles = vec![Arc::new(p.clone())];
        let plans = plans_for(&profiles, &stricter);
        let w = label_writes(
            &mut state, &plans, &observed, &profiles, &excl, &none, &owned,
        );
        assert!(w.is_empty());
        // The profile stops allowing it; nobody touched the namespace: lowered, not repaired.
        p.spec.allow_stricter = false;
        let profiles = vec![Arc::new(p)];
        let plans = plans_for(&profiles, &stricter);
        let w = label_writes(
            &mut state, &plans, &observed, &profiles, &excl, &none, &owned,
        );
        assert_eq!(applies(&w), [("app", false)]);
    }

    #[test]
    fn raising_enforce_when_a_rollout_completes_is_not_drift() {
        let mut p = (*profile("p", DeletionPolicy::Retain, false)).clone();
        p.spec.rollout = crate::operator::crd::Rollout::WhenCompliant;
        let view = ProfileView::from_profile(&p).expect("valid");
        let ns = [NamespaceView {
            name: "app".into(),
            labels: Labels::new(),
        }];
        let excl = Exclusions::new(Exclusions::DEFAULT);
        let blocked = plan(std::slice::from_ref(&view), &ns, &excl, &|_, _| {
            vec!["old".into()]
        });
        let mut state = State::default();
        // Pending, with audit/warn already at the target: nothing to write.
        let observed: BTreeMap<String, Labels> =
            [("app".to_owned(), blocked["app"].desired.clone())].into();
        let profiles = vec![Arc::new(p)];
        let (none, owned) = (|_: &str| false, HashMap::new());
        assert!(
            label_writes(
                &mut state, &blocked, &observed, &profiles, &excl, &none, &owned
            )
            .is_empty()
        );
        // The blocking Pod goes: enforce is raised, as an application, not a repair.
        let free = plan(std::slice::from_ref(&view), &ns, &excl, &|_, _| Vec::new());
        let w = label_writes(
            &mut state, &free, &observed, &profiles, &excl, &none, &owned,
        );
        assert_eq!(applies(&w), [("app", false)]);
    }

    #[test]
    fn owned_labels_come_from_our_apply_entry_only() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
        let entry = |manager: &str, operation: &str, label: &str| ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            fields_v1: Some(FieldsV1(
                json!({"f:metadata": {"f:labels": {format!("f:{label}"): {}}}}),
            )),
            ..Default::default()
        };
        let entries = Some(vec![
            entry(MANAGER, "Apply", psa::WARN),
            entry("kubectl-label", "Update", psa::ENFORCE),
            entry(MANAGER, "Update", psa::AUDIT),
        ]);
        assert_eq!(
            owned_labels(&entries),
            BTreeSet::from([psa::WARN.to_owned()])
        );
        assert!(owned_labels(&None).is_empty());
    }

    #[test]
    fn labels_we_own_but_no_longer_want_are_released_even_after_a_restart() {
        let profiles = vec![profile("p", DeletionPolicy::Retain, false)];
        let plans = plans_for(&profiles, &[("app", Labels::new())]);
        let mut labels = plans["app"].desired.clone();
        labels.insert(psa::WARN.into(), "restricted".into());
        let observed: BTreeMap<String, Labels> = [("app".to_owned(), labels)].into();
        let excl = Exclusions::new(Exclusions::DEFAULT);
        let none = |_: &str| false;
        // Someone else's warn label: left alone.
        let mut state = State::default();
        assert!(
            label_writes(
                &mut state,
                &plans,
                &observed,
                &profiles,
                &excl,
                &none,
                &HashMap::new()
            )
            .is_empty()
        );
        // Ours (per managedFields), with no memory of earlier writes: applied away.
        let owned = HashMap::from([("app".to_owned(), BTreeSet::from([psa::WARN.to_owned()]))]);
        let mut state = State::default();
        let writes = label_writes(
            &mut state, &plans, &observed, &profiles, &excl, &none, &owned,
        );
        assert_eq!(applies(&writes), [("app", false)]);
    }

    /// Serves one request to `check`, answering with `response`.
    async fn serve_one(
        mut handle: tower_test::mock::Handle<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >,
        check: impl FnOnce(&http::Request<()>, serde_json::Value),
        response: serde_json::Value,
    ) {
        let (request, send) = handle.next_request().await.expect("one request");
        let (parts, body) = request.into_parts();
        let body = body.collect_bytes().await.expect("request body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json body");
        check(&http::Request::from_parts(parts, ()), json);
        let bytes = serde_json::to_vec(&response).expect("json");
        send.send_response(
            http::Response::builder()
                .body(kube::client::Body::from(bytes))
                .expect("response"),
        );
    }

    #[tokio::test]
    async fn labels_are_server_side_applied_by_one_field_manager_and_nothing_else() {
        let (service, handle) = tower_test::mock::pair();
        let client = Client::new(service, "default");
        let desired: Labels = [
            (psa::ENFORCE.to_owned(), "baseline".to_owned()),
            (psa::ENFORCE_VERSION.to_owned(), "latest".to_owned()),
        ]
        .into();
        let write = Write::Apply {
            ns: "app".into(),
            desired: desired.clone(),
            declared: Some(desired.clone()),
            changes: Vec::new(),
            drift: false,
            profiles: vec!["p".into()],
        };
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
                // Only the PSA labels: no other label, annotation, spec or status.
                assert_eq!(
                    body,
                    json!({
                        "apiVersion": "v1",
                        "kind": "Namespace",
                        "metadata": {"name": "app", "labels": {
                            psa::ENFORCE: "baseline",
                            psa::ENFORCE_VERSION: "latest",
                        }},
                    })
                );
            },
            json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "app", "resourceVersion": "42",
                             "labels": {"team": "x", psa::ENFORCE: "baseline"}},
            }),
        );
        let (written, ()) = tokio::join!(write_labels(&client, &write), server);
        let written = written.expect("applied");
        assert_eq!(written.resource_version, Some(42));
        assert_eq!(written.labels.get("team").map(String::as_str), Some("x"));
    }

    /// A context whose client is never answered (the code under test books results only), and
    /// the writer of its namespace store.
    fn booking_context() -> (
        Arc<Context>,
        reflector::store::Writer<PartialObjectMeta<Namespace>>,
    ) {
        let (mock, _) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let (profiles, _) = reflector::store();
        let (namespaces, writer) = reflector::store();
        let ctx = Context {
            client: Client::new(mock, "default"),
            events: tokio::sync::mpsc::unbounded_channel().0,
            metrics: Arc::new(Metrics::new().expect("metrics")),
            config: Config {
                exclusions: Exclusions::new(Exclusions::DEFAULT),
                identity: "test".into(),
                pause_limit: None,
            },
            profiles,
            namespaces,
            index: Default::default(),
            state: Mutex::new(State {
                dirty: Dirty::Some(HashSet::new()),
                ..Default::default()
            }),
            wake: tokio::sync::Notify::new(),
            fence: Fence::new(None),
            writes: tokio::sync::mpsc::unbounded_channel().0,
            reports: watch::channel(None).0,
            ready: Default::default(),
        };
        (Arc::new(ctx), writer)
    }

    fn release(ns: &str) -> Queued {
        Queued {
            write: Write::Release { ns: ns.into() },
            uid: None,
            before: Labels::new(),
        }
    }

    async fn woken(ctx: &Context) -> bool {
        tokio::time::timeout(Duration::from_millis(50), ctx.wake.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_failed_label_write_is_replanned_and_retried_after_its_delay() {
        let (ctx, _) = booking_context();
        ctx.state().in_flight.insert("app".into(), None);
        written(&ctx, release("app"), Err(Error::LeadershipLost)).await;
        {
            let state = ctx.state();
            assert!(
                state.in_flight.contains_key("app"),
                "left alone until the retry"
            );
            assert!(state.apply_errors.contains_key("app"));
            assert_eq!(state.write_retry, Some(Duration::from_secs(1)));
        }
        // The retry is due after 1 s: the namespace is free again, and marked for the pass.
        let mut waited = Duration::ZERO;
        while ctx.state().in_flight.contains_key("app") {
            assert!(waited < Duration::from_secs(10), "no retry after 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        }
        assert_eq!(ctx.state().dirty, Dirty::Some(["app".into()].into()));
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
            watcher::Event::Apply(kube::core::PartialObjectMetaExt::into_response_partial::<
                Namespace,
            >(meta))
        };
        let landed = |rv: u64| Written {
            resource_version: Some(rv),
            labels: Labels::new(),
        };
        // The store is older than our write: its watch event is still to come and will wake.
        store.apply_watcher_event(&at("7"));
        ctx.state().in_flight.insert("app".into(), None);
        written(&ctx, release("app"), Ok(landed(8))).await;
        assert!(!ctx.state().in_flight.contains_key("app"));
        assert_eq!(ctx.state().dirty.take(), Dirty::Some(["app".into()].into()));
        assert!(!woken(&ctx).await);
        // The watch was first: the pass it woke saw the write in flight, so wake another.
        store.apply_watcher_event(&at("9"));
        ctx.state().in_flight.insert("app".into(), None);
        written(&ctx, release("app"), Ok(landed(9))).await;
        assert_eq!(ctx.state().dirty.take(), Dirty::Some(["app".into()].into()));
        assert!(woken(&ctx).await);
    }

    #[tokio::test]
    async fn a_release_applies_no_labels_so_only_ours_go() {
        let (service, handle) = tower_test::mock::pair();
        let client = Client::new(service, "default");
        let server = serve_one(
            handle,
            |_, body| {
                assert_eq!(body["metadata"]["labels"], json!({}));
            },
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}}),
        );
        let write = Write::Release { ns: "app".into() };
        let (written, ()) = tokio::join!(write_labels(&client, &write), server);
        assert_eq!(written.expect("released").resource_version, None);
    }

    #[tokio::test]
    async fn status_is_server_side_applied_to_the_status_subresource() {
        let (service, handle) = tower_test::mock::pair();
        let client = Client::new(service, "default");
        let status = PodSecurityProfileStatus {
            matched_namespaces: 2,
            ..Default::default()
        };
        let server = serve_one(
            handle,
            |req, body| {
                assert_eq!(req.method(), http::Method::PATCH);
                assert_eq!(
                    req.uri().path(),
                    "/apis/pss-operator.io/v1alpha1/podsecurityprofiles/apps/status"
                );
                let query = req.uri().query().unwrap_or_default();
                assert!(
                    query.contains("fieldManager=pss-operator") && query.contains("force=true")
                );
                assert_eq!(body["kind"], "PodSecurityProfile");
                assert_eq!(body["status"]["matchedNamespaces"], 2);
                assert!(body.get("spec").is_none() && body.get("metadata").is_none());
            },
            json!({"apiVersion": "pss-operator.io/v1alpha1", "kind": "PodSecurityProfile",
                   "metadata": {"name": "apps"}, "spec": {"enforce": {"level": "baseline"}}}),
        );
        let api: Api<PodSecurityProfile> = Api::all(client);
        let (written, ()) = tokio::join!(apply_status(&api, "apps", &status), server);
        assert_eq!(written.expect("written").name_any(), "apps");
    }

    #[test]
    fn resource_versions_compare_as_numbers_or_not_at_all() {
        assert_eq!(resource_version(Some("1234".into())), Some(1234));
        assert_eq!(resource_version(Some("opaque-v1".into())), None);
        assert_eq!(resource_version(None), None);
    }

    #[test]
    fn deleted_remove_profiles_release_namespaces_nobody_else_governs() {
        let profiles = vec![
            profile("gone", DeletionPolicy::Remove, true),
            profile("kept-retain", DeletionPolicy::Retain, true),
        ];
        let ns = [("app", Labels::new()), ("kube-system", Labels::new())];
        let plans = plans_for(&profiles, &ns);
        let observed: BTreeMap<String, Labels> =
            ns.iter().map(|(n, l)| (n.to_string(), l.clone())).collect();
        let mut state = State::default();
        let ours = || BTreeSet::from([psa::ENFORCE.to_owned()]);
        let owned = HashMap::from([
            ("app".to_owned(), ours()),
            ("kube-system".to_owned(), ours()),
        ]);
        let writes = label_writes(
            &mut state,
            &plans,
            &observed,
            &profiles,
            &Exclusions::new(Exclusions::DEFAULT),
            &|_| false,
            &owned,
        );
        let released: Vec<&str> = writes
            .iter()
            .filter_map(|w| match w {
                Write::Release { ns } => Some(ns.as_str()),
                Write::Apply { .. } => None,
            })
            .collect();
        assert_eq!(released, ["app"], "excluded namespaces are never touched");
        // Where we own nothing there is nothing to release.
        let writes = label_writes(
            &mut state,
            &plans,
            &observed,
            &profiles,
            &Exclusions::new(Exclusions::DEFAULT),
            &|_| false,
            &HashMap::new(),
        );
        assert!(writes.is_empty());

        // If another live profile governs the namespace, its labels follow that one instead.
        let mut with_other = profiles.clone();
        with_other.push(profile("other", DeletionPolicy::Retain, false));
        let plans = plans_for(&with_other, &ns);
        let writes = label_writes(
            &mut state,
            &plans,
            &observed,
            &with_other,
            &Exclusions::new(Exclusions::DEFAULT),
            &|_| false,
            &owned,
        );
        assert_eq!(applies(&writes), [("app", false)]);
        assert!(!writes.iter().any(|w| matches!(w, Write::Release { .. })));
    }
}
