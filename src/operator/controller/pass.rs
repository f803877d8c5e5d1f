//! The pass: re-plans the namespaces whose inputs changed (all of them after a relist, a profile
//! change, or every `RESYNC`), queues the label writes that differ (see [`plan_writes`]) without
//! waiting for them, and hands its picture to the reporter.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::core::error_boundary::InvalidObject;
use tracing::{debug, info, warn};

use super::context::{Context, Dirty, MAX_RETRY, Picture, Shared};
use super::events;
use super::finalizer;
use super::namespace_store::StoredNamespace;
use super::writer;
use crate::operator::backoff::Backoff;
use crate::operator::crd::PodSecurityProfile;
use crate::operator::desired::{
    LabelsByNamespace, NamespacePlan, NamespaceView, Plans, ProfileView, plan_namespace,
};
use crate::operator::index::PodIndex;
use crate::operator::labels::{Cluster, LabelWrite, Owned, governs, plan_writes};
use crate::operator::pods::SlimPod;
use crate::operator::record::Record;
use crate::operator::workloads::TemplateIndex;
use crate::pss::{LevelVersion, Policy};

/// Coalesces bursts (a Deployment scaling, a relist) into one pass; short, as a pass re-plans only
/// what changed.
const DEBOUNCE: Duration = Duration::from_millis(30);
/// Every namespace is re-planned this often when nothing woke a pass for that long...
pub(super) const RESYNC: Duration = Duration::from_secs(60);
/// ...and at least this often while passes keep being woken: at 10,000 namespaces a full re-plan
/// and the report of everything it hands on take ~0.3 s, which a label repair or a new Pod that
/// woke the pass would wait for (the slowest of 100 new privileged Pods in /metrics waited for
/// it: ~1.1-1.5 s against ~0.6 s for the others).
const RESYNC_UNDER_CHURN: Duration = Duration::from_secs(300);

/// Runs a pass when woken (coalesced), or every `RESYNC`, once the initial lists are in.
pub(super) async fn pass_loop(ctx: Arc<Context>) {
    let mut retry = Backoff::new(Duration::from_secs(1), MAX_RETRY);
    let mut plans = PlanCache::default();
    loop {
        let woken = tokio::time::timeout(RESYNC, ctx.wake.notified())
            .await
            .is_ok();
        tokio::time::sleep(DEBOUNCE).await;
        let (labels_known, pods_known) = {
            let shared = ctx.shared();
            (shared.labels_synced(), shared.synced())
        };
        if !labels_known {
            debug!("waiting for the lists of profiles and namespaces");
            continue;
        }
        let started = Instant::now();
        let failures = pass(&ctx, &mut plans, !woken, pods_known).await;
        if pods_known && !ctx.ready.swap(true, Ordering::Relaxed) {
            info!(
                failures,
                pass_ms = started.elapsed().as_millis() as u64,
                "first pass complete"
            );
        }
        if failures > 0 {
            let delay = retry.failed();
            warn!(failures, retry_in = ?delay, "some writes failed; retrying");
            let c = ctx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                c.wake.notify_one();
            });
        } else {
            retry.succeeded();
        }
    }
}

/// What passes keep between them, so that a pass re-plans only the namespaces whose inputs
/// changed (see [`Dirty`]): re-planning all 2,000 namespaces on every pass at 100 drifts/s made
/// every repair wait for ~80 ms of planning under load.
#[derive(Default)]
struct PlanCache {
    /// The profiles the plans were made from (see [`ProfileKey`]).
    profiles: Vec<ProfileKey>,
    /// When every namespace was last re-planned.
    last_full: Option<Instant>,
    plans: Plans,
    /// The namespaces' labels: the store's, or what our last write returned while the store
    /// has not shown it yet.
    labels: LabelsByNamespace,
    /// The PSA labels and record our field manager owns, per namespace (from managedFields).
    owned: HashMap<String, Arc<Owned>>,
    /// The readable ledger records on the namespaces (the store's, or our last write's).
    records: HashMap<String, Record>,
    /// The plans were made before every Pod and workload template was listed: labels go on
    /// first, protection does not wait for the scan of 150,000 Pods.
    before_pods: bool,
    /// Namespaces whose plan read their Pods (a `WhenCompliant` rollout) before the Pods were
    /// listed: nothing is written or announced for them until a pass that knows the Pods.
    waiting_for_pods: HashSet<String>,
}

impl PlanCache {
    /// The plans of the namespaces a pass re-planned (`None`: all of them).
    fn replanned<'a>(
        &'a self,
        names: Option<&'a HashSet<String>>,
    ) -> Box<dyn Iterator<Item = &'a NamespacePlan> + Send + 'a> {
        match names {
            Some(names) => Box::new(
                names
                    .iter()
                    .filter_map(|ns| self.plans.get(ns).map(|p| &**p)),
            ),
            None => Box::new(self.plans.values().map(|p| &**p)),
        }
    }

    fn clear(&mut self) {
        self.plans.clear();
        self.labels.clear();
        self.owned.clear();
        self.records.clear();
        self.waiting_for_pods.clear();
    }

    /// A namespace that is gone.
    fn forget(&mut self, ns: &str) {
        self.plans.remove(ns);
        self.labels.remove(ns);
        self.owned.remove(ns);
        self.records.remove(ns);
        self.waiting_for_pods.remove(ns);
    }
}

/// What a plan takes from a profile. Its status (our own writes) and resourceVersion are left
/// out: they change on every report and would re-plan every namespace each time.
#[derive(Debug, Clone, PartialEq)]
struct ProfileKey {
    name: String,
    uid: Option<String>,
    generation: Option<i64>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl ProfileKey {
    fn of(p: &PodSecurityProfile) -> Self {
        ProfileKey {
            name: p.name_any(),
            uid: p.uid(),
            generation: p.metadata.generation,
            deleting: p.deleting(),
            finalizers: p.finalizers().to_vec(),
        }
    }
}

/// The profiles of the store, read once per pass.
struct Profiles {
    /// Readable profiles, sorted by name, deleted ones included.
    all: Vec<Arc<PodSecurityProfile>>,
    keys: Vec<ProfileKey>,
    /// The live profiles' views, or why a profile is invalid.
    views: HashMap<String, Result<ProfileView, String>>,
    /// The valid live views: what namespaces are planned from.
    valid: Vec<ProfileView>,
    /// Profiles that no longer deserialize.
    unreadable: Vec<InvalidObject>,
}

/// One level-based pass: re-plans the namespaces whose inputs changed, queues the label writes
/// that differ and hands its picture to the reporter. A `resync` (nothing woke the pass: the
/// periodic re-plan of every namespace) that changes nothing hands none: every change to what
/// the reporter shows wakes a pass, and at 10,000 namespaces and 150,000 Pods recomputing
/// every status and metric each minute was most of the idle CPU. Returns how many writes failed.
///
/// Until `pods_known` (the Pods and workload templates are still being listed: ~20 s at
/// 150,000 Pods) a pass only labels: it queues the writes of the namespaces whose plan does
/// not read their Pods, and sets no policy, posts no Event about Pods, touches no finalizer and
/// hands the reporter nothing (its statuses and metrics would count no Pods).
async fn pass(ctx: &Arc<Context>, cache: &mut PlanCache, resync: bool, pods_known: bool) -> usize {
    let started = Instant::now();
    let before = resync.then(|| (cache.plans.clone(), cache.labels.clone()));
    let profiles = read_profiles(ctx, &cache.profiles);
    let index = ctx.index.read().await;
    let templates = ctx.templates.read().await;
    let inputs = Inputs {
        index: &index,
        templates: &templates,
        listed: pods_known,
    };
    let timer = ctx.metrics.timer("namespace");
    let (replanned, policies, mut announced) = {
        let mut shared = ctx.shared();
        for p in &profiles.all {
            let stored = p.status.as_ref().map_or(0, |s| s.drift_corrections);
            shared.ledger.seed_drift(&p.name_any(), stored);
        }
        let mut dirty = take_dirty(ctx, &mut shared, cache, &profiles.keys, resync);
        if pods_known && std::mem::take(&mut cache.before_pods) {
            dirty = Dirty::All;
        }
        cache.before_pods |= !pods_known;
        let (replanned, unreadable) = replan(ctx, &mut shared, cache, &profiles, &inputs, dirty);
        // What a persisted record says is known before anything is announced or written.
        for plan in cache.replanned(replanned.as_ref()).filter(|p| governs(p)) {
            if let Some(record) = cache.records.get(&plan.name) {
                shared.ledger.adopt(&plan.name, record);
            }
        }
        let mut announced = events::unreadable_records(ctx, &mut shared.ledger, unreadable);
        announced.extend(events::announcements(
            ctx,
            &mut shared.ledger,
            cache
                .replanned(replanned.as_ref())
                .filter(|p| !cache.waiting_for_pods.contains(&p.name)),
        ));
        let policies = if pods_known {
            changed_policies(cache, replanned.as_ref(), &index)
        } else {
            Vec::new()
        };
        (replanned, policies, announced)
    };
    drop(templates);
    drop(index);
    if !pods_known {
        let writes = label_writes(
            ctx,
            &mut ctx.shared(),
            cache,
            &profiles.all,
            replanned.as_ref(),
        );
        if replanned.is_none() {
            info!(
                writes = writes.len(),
                waiting_for_pods = cache.waiting_for_pods.len(),
                "labels planned before the Pods are listed"
            );
        }
        events::queue_all(ctx, announced);
        writer::queue(ctx, writes);
        return 0;
    }
    set_policies(ctx, cache, policies, replanned.is_none()).await;
    let writes = {
        // Blocked workloads are read against the policies just set (a first pass would see
        // none yet, and forget what a persisted record says was announced).
        let templates = ctx.templates.read().await;
        let mut shared = ctx.shared();
        announced.extend(events::blocked(
            &mut shared.ledger,
            &templates,
            cache.replanned(replanned.as_ref()),
        ));
        label_writes(ctx, &mut shared, cache, &profiles.all, replanned.as_ref())
    };
    drop(timer);
    let planned = started.elapsed();

    let unchanged = before.is_some_and(|(plans, labels)| {
        writes.is_empty() && announced.is_empty() && plans == cache.plans && labels == cache.labels
    });
    events::queue_all(ctx, announced);
    if !writes.is_empty() {
        debug!(
            writes = writes.len(),
            replanned = replanned.as_ref().map_or(cache.plans.len(), HashSet::len),
            plan_ms = planned.as_millis() as u64,
            "label writes queued"
        );
    }
    writer::queue(ctx, writes);

    let observed = observed_with_repairs(&ctx.shared(), cache);
    // Released namespaces are known from the store (we no longer own labels there), so a
    // finalizer goes on the pass after the last release landed.
    let cluster = Cluster {
        plans: &cache.plans,
        labels: &observed,
        owned: &cache.owned,
        records: &cache.records,
        profiles: &profiles.all,
        exclusions: &ctx.config.exclusions,
    };
    let failures = finalizer::update(ctx, &cluster).await;
    if unchanged && ctx.pictures.borrow().is_some() {
        debug!("resync: nothing changed, nothing to report");
        return failures;
    }

    ctx.pictures.send_replace(Some(Arc::new(Picture {
        profiles: profiles.all,
        views: profiles.views,
        unreadable: profiles.unreadable,
        plans: cache.plans.clone(),
        observed,
    })));
    failures
}

/// Reads and validates the profiles of the store; an invalid one is logged when the profiles
/// changed since `planned_from`.
fn read_profiles(ctx: &Context, planned_from: &[ProfileKey]) -> Profiles {
    let mut all: Vec<Arc<PodSecurityProfile>> = Vec::new();
    let mut unreadable = Vec::new();
    for guarded in ctx.profiles.state() {
        match &guarded.0 {
            Ok(p) => all.push(Arc::new(p.clone())),
            Err(invalid) => unreadable.push(invalid.clone()),
        }
    }
    all.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let keys: Vec<ProfileKey> = all.iter().map(|p| ProfileKey::of(p)).collect();
    let mut views = HashMap::new();
    for p in all.iter().filter(|p| !p.deleting()) {
        let view = ProfileView::from_profile(p);
        if let Err(e) = &view
            && keys != planned_from
        {
            warn!(profile = %p.name_any(), error = %e, "invalid profile: marked Degraded, skipped");
        }
        views.insert(p.name_any(), view);
    }
    let valid = views
        .values()
        .filter_map(|v| v.as_ref().ok())
        .cloned()
        .collect();
    Profiles {
        all,
        keys,
        views,
        valid,
        unreadable,
    }
}

/// The namespaces to re-plan: the dirty ones, or all of them when the profiles changed or a
/// resync is due (`resync`: nothing woke this pass). Forgets our writes the store has caught up
/// with (their namespaces are re-planned from the store).
fn take_dirty(
    ctx: &Context,
    shared: &mut Shared,
    cache: &PlanCache,
    keys: &[ProfileKey],
    resync: bool,
) -> Dirty {
    let mut dirty = shared.dirty.take();
    let resync_due = full_replan_due(cache.last_full.map(|t| t.elapsed()), resync);
    if resync_due || keys != cache.profiles {
        dirty = Dirty::All;
    }
    // Until the store shows our write (or something newer) it is older than our write: its
    // labels are replaced by what our write returned, and the namespace gets no other write (its
    // managedFields are old too).
    shared.unseen_writes.retain(|ns, ours| {
        let keep = ctx
            .stored_version(ns)
            .is_some_and(|seen| seen < ours.version);
        if !keep {
            dirty.mark(ns);
        }
        keep
    });
    dirty
}

/// Whether every namespace is due for a re-plan, `since` the last full one (`None`: never);
/// `resync`: nothing woke this pass.
fn full_replan_due(since: Option<Duration>, resync: bool) -> bool {
    since.is_none_or(|since| (resync && since >= RESYNC) || since >= RESYNC_UNDER_CHURN)
}

/// An annotation that is not a ledger record: the namespace, the value and why.
pub(super) struct Unreadable {
    pub ns: String,
    pub value: String,
    pub error: String,
}

/// Re-plans the `dirty` namespaces into the cache and forgets the ones that are gone. Returns
/// the names re-planned (`None` for all of them) and the unreadable records met.
fn replan(
    ctx: &Context,
    shared: &mut Shared,
    cache: &mut PlanCache,
    profiles: &Profiles,
    inputs: &Inputs<'_>,
    dirty: Dirty,
) -> (Option<HashSet<String>>, Vec<Unreadable>) {
    let mut unreadable = Vec::new();
    let replanned = match dirty {
        Dirty::All => {
            cache.last_full = Some(Instant::now());
            cache.profiles = profiles.keys.clone();
            cache.clear();
            for n in ctx.namespaces.state() {
                unreadable.extend(replan_one(ctx, shared, cache, &profiles.valid, inputs, &n));
            }
            let plans = &cache.plans;
            shared.ledger.retain(|ns| plans.contains_key(ns));
            None
        }
        Dirty::Some(names) => {
            let mut gone = HashSet::new();
            for ns in &names {
                match ctx.stored_namespace(ns) {
                    Some(n) => unreadable.extend(replan_one(
                        ctx,
                        shared,
                        cache,
                        &profiles.valid,
                        inputs,
                        &n,
                    )),
                    None => {
                        cache.forget(ns);
                        gone.insert(ns.as_str());
                    }
                }
            }
            if !gone.is_empty() {
                shared.ledger.retain(|ns| !gone.contains(ns));
            }
            Some(names)
        }
    };
    (replanned, unreadable)
}

/// What plans read besides the namespaces and profiles: the running Pods and the workload
/// templates.
struct Inputs<'a> {
    index: &'a PodIndex<SlimPod>,
    templates: &'a TemplateIndex<SlimPod>,
    /// Every Pod and template is listed (until then both indexes are empty).
    listed: bool,
}

impl Inputs<'_> {
    /// What would be refused at `level` in `ns`: running Pods (by name) and workload templates
    /// (`Kind/name`), sorted. A `WhenCompliant` rollout waits for both: a template that violates
    /// the target breaks its workload's next rollout, scale-up or CronJob run.
    fn blocking(&self, ns: &str, level: LevelVersion) -> Vec<String> {
        let mut blocking = self.index.blocking(ns, level);
        blocking.extend(self.templates.blocking(ns, level));
        blocking.sort_unstable();
        blocking
    }
}

/// Plans one namespace from the store's object (or our write the store has not shown yet);
/// returns its ledger annotation when it is not a record (the namespace then has none).
fn replan_one(
    ctx: &Context,
    shared: &Shared,
    cache: &mut PlanCache,
    profiles: &[ProfileView],
    inputs: &Inputs<'_>,
    n: &StoredNamespace,
) -> Option<Unreadable> {
    let name = n.name.clone();
    let mut unreadable = None;
    let (labels, record) = match shared.unseen_writes.get(&name) {
        Some(ours) => (ours.labels.clone(), ours.record.clone()),
        None => {
            let record = n.record.as_deref().and_then(|value| {
                let value: &str = value;
                Record::decode(value)
                    .map_err(|e| {
                        unreadable = Some(Unreadable {
                            ns: name.clone(),
                            value: value.to_owned(),
                            error: e.to_string(),
                        })
                    })
                    .ok()
            });
            (n.labels.clone(), record)
        }
    };
    let view = NamespaceView { name, labels };
    let read_pods = Cell::new(false);
    let plan = plan_namespace(
        profiles,
        &view,
        &ctx.config.exclusions,
        inputs.index.admission(),
        &|ns, lv| {
            read_pods.set(true);
            inputs.blocking(ns, lv)
        },
    );
    if read_pods.get() && !inputs.listed {
        cache.waiting_for_pods.insert(view.name.clone());
    } else {
        cache.waiting_for_pods.remove(&view.name);
    }
    if plan.excluded {
        // Never touched: what it carries is not ours to read or report.
        unreadable = None;
    }
    cache.owned.insert(view.name.clone(), n.owned.clone());
    match record {
        Some(r) => cache.records.insert(view.name.clone(), r),
        None => cache.records.remove(&view.name),
    };
    cache.plans.insert(view.name.clone(), Arc::new(plan));
    cache.labels.insert(view.name, view.labels);
    unreadable
}

/// The policies the index checks Pods against, where re-planning changed them.
fn changed_policies(
    cache: &PlanCache,
    replanned: Option<&HashSet<String>>,
    index: &PodIndex<SlimPod>,
) -> Vec<(String, Policy)> {
    cache
        .replanned(replanned)
        .filter(|p| index.policy(&p.name) != p.policy)
        .map(|p| (p.name.clone(), p.policy))
        .collect()
}

async fn set_policies(
    ctx: &Context,
    cache: &PlanCache,
    policies: Vec<(String, Policy)>,
    all: bool,
) {
    if policies.is_empty() && !all {
        return;
    }
    let mut index = ctx.index.write().await;
    let mut templates = ctx.templates.write().await;
    // Namespaces that are gone (a full pass): most resyncs find none, and change nothing.
    let gone = all
        && index
            .policies()
            .keys()
            .any(|ns| !cache.plans.contains_key(ns));
    if policies.is_empty() && !gone {
        return;
    }
    // One table for the Pod index and each workload kind's, copied only when it changes.
    let mut table = Arc::clone(index.policies());
    let changes = Arc::make_mut(&mut table);
    changes.extend(policies);
    if gone {
        changes.retain(|ns, _| cache.plans.contains_key(ns));
    }
    templates.set_policies(&table);
    index.set_policies(table);
}

/// The label writes of the re-planned namespaces that are not busy with a write already; marks
/// them in flight.
fn label_writes(
    ctx: &Context,
    shared: &mut Shared,
    cache: &PlanCache,
    profiles: &[Arc<PodSecurityProfile>],
    replanned: Option<&HashSet<String>>,
) -> Vec<LabelWrite> {
    let busy: HashSet<String> = shared
        .unseen_writes
        .keys()
        .chain(shared.in_flight.keys())
        .cloned()
        .collect();
    let is_replanned = |ns: &str| replanned.is_none_or(|r| r.contains(ns));
    let cluster = Cluster {
        plans: &cache.plans,
        labels: &cache.labels,
        owned: &cache.owned,
        records: &cache.records,
        profiles,
        exclusions: &ctx.config.exclusions,
    };
    let writes = plan_writes(&mut shared.ledger, &cluster, &|ns| {
        busy.contains(ns) || !is_replanned(ns) || cache.waiting_for_pods.contains(ns)
    });
    for w in &writes {
        // A drift being repaired is reported as repaired, so Ready does not flap for the
        // moment the repair takes (a failed repair shows as ApplyFailed instead).
        let repairing = match w {
            LabelWrite::Apply { record, .. } if w.repairs() => Some(record.labels.clone()),
            _ => None,
        };
        shared.in_flight.insert(w.namespace().to_owned(), repairing);
    }
    writes
}

/// What the reporter shows: the labels, with what drift repairs in flight restore.
fn observed_with_repairs(shared: &Shared, cache: &PlanCache) -> LabelsByNamespace {
    let mut observed = cache.labels.clone();
    for (ns, repairing) in &shared.in_flight {
        if let (Some(labels), Some(o)) = (repairing, observed.get_mut(ns)) {
            *o = labels.clone();
        }
    }
    observed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::PodSecurityProfileStatus;
    use crate::operator::testing::profile;

    fn namespace(name: &str, labels: &[(&str, &str)]) -> StoredNamespace {
        StoredNamespace {
            name: name.into(),
            uid: None,
            resource_version: Some("1".into()),
            labels: Arc::new(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            owned: Default::default(),
            record: None,
        }
    }

    #[tokio::test]
    async fn a_resync_that_changes_nothing_hands_the_reporter_nothing() {
        let (ctx, mut store) = super::super::fixtures::booking_context();
        store.apply_watcher_event(&kube::runtime::watcher::Event::Apply(namespace("a", &[])));
        let mut pictures = ctx.pictures.subscribe();
        let mut cache = PlanCache::default();
        let full_pass = async |cache: &mut PlanCache, resync: bool| {
            ctx.shared().dirty = Dirty::All;
            pass(&ctx, cache, resync, true).await
        };
        full_pass(&mut cache, false).await;
        assert!(
            pictures.has_changed().expect("open"),
            "a woken pass reports"
        );
        pictures.mark_unchanged();
        full_pass(&mut cache, true).await;
        assert!(!pictures.has_changed().expect("open"), "nothing changed");
        // Someone labels the namespace and the event was missed: the resync finds and reports it.
        store.apply_watcher_event(&kube::runtime::watcher::Event::Apply(namespace(
            "a",
            &[("pod-security.kubernetes.io/enforce", "baseline")],
        )));
        full_pass(&mut cache, true).await;
        assert!(
            pictures.has_changed().expect("open"),
            "a changed namespace is reported"
        );
        let picture = pictures.borrow_and_update().clone().expect("a picture");
        assert_eq!(
            picture.observed["a"]
                .get("pod-security.kubernetes.io/enforce")
                .map(String::as_str),
            Some("baseline")
        );
    }

    #[tokio::test]
    async fn labels_go_on_before_the_pods_are_listed_except_where_a_rollout_waits_for_them() {
        use crate::operator::crd::Rollout;
        use kube::runtime::watcher::Event;
        let (ctx, mut namespaces, mut profiles) =
            super::super::fixtures::booking_context_with_profiles();
        for p in [
            profile("web").team("web").enforce("baseline").build(),
            profile("batch")
                .team("batch")
                .enforce("baseline")
                .rollout(Rollout::WhenCompliant)
                .build(),
        ] {
            profiles.apply_watcher_event(&Event::Apply(crate::operator::readable::Readable(Ok(p))));
        }
        for (name, team) in [("a", "web"), ("b", "batch")] {
            namespaces.apply_watcher_event(&Event::Apply(namespace(name, &[("team", team)])));
        }
        let pictures = ctx.pictures.subscribe();
        let mut cache = PlanCache::default();
        let queued = || {
            let mut names: Vec<String> = ctx.shared().in_flight.keys().cloned().collect();
            names.sort();
            names
        };

        ctx.shared().dirty = Dirty::All;
        pass(&ctx, &mut cache, false, false).await;
        assert_eq!(queued(), ["a"], "b's rollout waits for its Pods");
        assert!(
            !pictures.has_changed().expect("open"),
            "no status or metric counts Pods not listed yet"
        );
        assert!(cache.waiting_for_pods.contains("b"));

        // The lists complete: the next pass plans every namespace again, with its Pods (none).
        pass(&ctx, &mut cache, false, true).await;
        assert_eq!(queued(), ["a", "b"]);
        assert!(pictures.has_changed().expect("open"), "now it reports");
        assert!(cache.waiting_for_pods.is_empty());
        assert!(!cache.before_pods);
    }

    #[test]
    fn a_woken_pass_stays_incremental_until_the_resync_under_churn() {
        let s = Duration::from_secs;
        assert!(
            full_replan_due(None, false),
            "the first pass plans everything"
        );
        assert!(!full_replan_due(Some(s(59)), true));
        assert!(full_replan_due(Some(s(60)), true), "idle: every RESYNC");
        assert!(
            !full_replan_due(Some(s(61)), false),
            "woken: only what changed"
        );
        assert!(!full_replan_due(Some(s(299)), false));
        assert!(full_replan_due(Some(s(300)), false), "but not forever");
    }

    #[test]
    fn our_status_writes_do_not_replan_every_namespace_a_spec_change_does() {
        let p = profile("p").enforce("baseline").build();
        let key = ProfileKey::of(&p);
        let mut with_status = p.clone();
        with_status.status = Some(PodSecurityProfileStatus {
            drift_corrections: 3,
            ..Default::default()
        });
        with_status.metadata.resource_version = Some("42".into());
        assert_eq!(ProfileKey::of(&with_status), key);
        let mut edited = p.clone();
        edited.metadata.generation = Some(edited.metadata.generation.unwrap_or(1) + 1);
        assert_ne!(ProfileKey::of(&edited), key);
        let deleting = profile("p").enforce("baseline").deleting().build();
        assert_ne!(ProfileKey::of(&deleting), key);
    }
}
