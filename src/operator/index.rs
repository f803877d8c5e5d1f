//! The in-memory index of running Pods and their verdicts, fed by the Pod watch (`apply`,
//! `delete`, `reset`) and by the planner (`set_policy`). Pure and synchronous: no I/O, no clocks.
//!
//! Only projections are kept: whatever type `P` the caller chooses (the evaluator's slim pod model
//! in the operator, small fakes in tests). Pods with equal projections (the Pods of one
//! ReplicaSet, Job or DaemonSet, once the watch has normalized them) share one allocation through
//! a content-addressed [`Interner`]; per Pod the index keeps only its name, that shared
//! projection, its privileged-container count and the failing checks per mode. Messages are
//! recomputed on demand for the few samples a status shows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use crate::pss::{Admission, CheckId, CheckSet, KubeVersion, LevelVersion, Mode, Policy};

/// The outcome of evaluating one Pod at one level.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Failing check ids (iterating in the evaluator's order); empty when allowed.
    pub checks: CheckSet,
    /// kube-apiserver's denial message; empty when allowed.
    pub message: String,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.checks.is_empty()
    }
}

/// What the index needs from a pod projection.
pub trait Evaluate {
    /// The verdict of a server of version `kube` (what `latest` means there).
    fn evaluate(&self, level: LevelVersion, kube: KubeVersion) -> Verdict;
    /// Only the failing check ids: what the index keeps for every Pod, without rendering a
    /// message it would drop (messages are rendered on demand for the few samples).
    fn failing_checks(&self, level: LevelVersion, kube: KubeVersion) -> CheckSet {
        self.evaluate(level, kube).checks
    }
    fn privileged_containers(&self) -> usize;
    /// `spec.runtimeClassName`: admission skips Pods whose RuntimeClass it exempts.
    fn runtime_class(&self) -> Option<&str> {
        None
    }
    /// Takes out what only the messages read, never a verdict (the container names), so that
    /// Pods that differ only there share one projection: with every Pod's containers named
    /// apart, one projection per Pod was ~1 KB. The default sets nothing apart.
    fn take_names(&mut self) -> Box<str> {
        Box::default()
    }
    /// The projection with `names` (from [`Evaluate::take_names`]) put back; `None` when
    /// nothing was set apart.
    fn with_names(&self, _names: &str) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
}

/// Whether the server described by `admission` skips this Pod (its RuntimeClass is exempt).
fn exempt<P: Evaluate>(pod: &P, admission: &Admission) -> bool {
    admission.config.exempt_runtime_class(pod.runtime_class())
}

/// The verdict of the server described by `admission`: nothing fails for an exempt Pod.
pub fn judge<P: Evaluate>(pod: &P, level: LevelVersion, admission: &Admission) -> Verdict {
    if exempt(pod, admission) {
        return Verdict::default();
    }
    pod.evaluate(level, admission.kube)
}

/// A content-addressed table of shared projections: `intern` hands out one `Arc` per distinct
/// projection. Entries are dropped by `release` (when the last Pod using one goes) or `sweep`.
#[derive(Debug)]
pub struct Interner<P> {
    table: HashSet<Arc<P>>,
}

impl<P> Default for Interner<P> {
    fn default() -> Self {
        Interner {
            table: HashSet::new(),
        }
    }
}

impl<P: Hash + Eq> Interner<P> {
    /// The shared projection equal to `pod`, added if new.
    pub fn intern(&mut self, pod: P) -> Arc<P> {
        if let Some(shared) = self.table.get(&pod) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(pod);
        self.table.insert(Arc::clone(&shared));
        shared
    }

    /// Like `intern`, for a projection already shared (by another table): the equal one of this
    /// table if there is one, else `pod` itself, added.
    pub fn intern_shared(&mut self, pod: Arc<P>) -> Arc<P> {
        if let Some(shared) = self.table.get(&*pod) {
            return Arc::clone(shared);
        }
        self.table.insert(Arc::clone(&pod));
        pod
    }

    /// Gives back a projection `intern` handed out: its entry goes when nothing else uses it.
    fn release(&mut self, pod: Arc<P>) {
        // Two references left: `pod` and the table's own.
        if Arc::strong_count(&pod) == 2
            && self.table.get(&*pod).is_some_and(|s| Arc::ptr_eq(s, &pod))
        {
            self.table.remove(&*pod);
        }
    }

    /// Drops the entries only this table still uses.
    pub(crate) fn sweep(&mut self) {
        self.table.retain(|p| Arc::strong_count(p) > 1);
    }
}

impl<P> Interner<P> {
    /// Distinct projections held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// Failing checks already computed within one call, per (shared projection, level): the Pods of
/// one template in one namespace share both, so `reset` and `set_policy` evaluate each pair once.
/// Keys are the projections' addresses, valid because nothing is freed while a memo lives (the
/// callers release nothing before they return).
struct Memo<'a> {
    admission: &'a Admission,
    checks: HashMap<(usize, LevelVersion), CheckSet>,
}

impl<'a> Memo<'a> {
    fn new(admission: &'a Admission) -> Self {
        Memo {
            admission,
            checks: HashMap::new(),
        }
    }

    fn checks<P: Evaluate>(&mut self, pod: &Arc<P>, level: LevelVersion) -> CheckSet {
        let admission = self.admission;
        *self
            .checks
            .entry((Arc::as_ptr(pod) as usize, level))
            .or_insert_with(|| {
                if exempt(&**pod, admission) {
                    CheckSet::default()
                } else {
                    pod.failing_checks(level, admission.kube)
                }
            })
    }

    /// Failing checks per mode (indexed like `Mode::ALL`) against `policy`.
    fn all_modes<P: Evaluate>(&mut self, pod: &Arc<P>, policy: &Policy) -> [CheckSet; 3] {
        Mode::ALL.map(|mode| self.checks(pod, policy.get(mode)))
    }
}

#[derive(Debug)]
struct Entry<P> {
    /// The shared projection, without the container names.
    pod: Arc<P>,
    /// The container names (shared by the Pods of one template).
    names: Arc<Box<str>>,
    privileged: u32,
    /// Failing checks per mode (indexed like `Mode::ALL`) against the namespace policy.
    checks: [CheckSet; 3],
    /// The Pod's controller as `Kind/name` (shared by its Pods), from its ownerReferences.
    owner: Option<Arc<str>>,
}

impl<P: Evaluate> Entry<P> {
    fn new(
        (pod, names): (Arc<P>, Arc<Box<str>>),
        policy: &Policy,
        memo: &mut Memo<'_>,
        owner: Option<Arc<str>>,
    ) -> Self {
        Entry {
            privileged: u32::try_from(pod.privileged_containers()).unwrap_or(u32::MAX),
            checks: memo.all_modes(&pod, policy),
            pod,
            names,
            owner,
        }
    }
}

/// The Pods of one namespace, and the counts reports read.
#[derive(Debug)]
struct Namespace<P> {
    /// Sorted by name, in one allocation. As a `BTreeMap`, a namespace of ~15 Pods held two or
    /// three nodes of ~800 bytes: ~160 bytes a Pod, most of the index at 10,000 namespaces.
    /// Inserting shifts the Pods after it: a few microseconds per thousand.
    pods: Vec<(Box<str>, Entry<P>)>,
    totals: Totals,
}

impl<P> Default for Namespace<P> {
    fn default() -> Self {
        Namespace {
            pods: Vec::new(),
            totals: Totals::default(),
        }
    }
}

impl<P> Namespace<P> {
    /// Where the Pod `name` is (`Ok`) or would go (`Err`).
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.pods.binary_search_by(|(n, _)| (**n).cmp(name))
    }

    fn get(&self, name: &str) -> Option<&Entry<P>> {
        self.find(name).ok().map(|i| &self.pods[i].1)
    }

    fn entries(&self) -> impl Iterator<Item = &Entry<P>> {
        self.pods.iter().map(|(_, e)| e)
    }

    /// Sorts Pods pushed in any order, keeping the last of equal names, and fits the room.
    fn sort(&mut self) {
        self.pods.sort_by(|a, b| a.0.cmp(&b.0));
        self.pods.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        self.pods.shrink_to_fit();
    }
}

/// Per namespace, what reports read, kept as Pods come and go: violating Pods and their failing
/// checks per mode, privileged containers. A report reads these instead of walking every Pod (at
/// 150,000 Pods it walked them six times per report: statuses and metrics, three modes each).
#[derive(Debug, Default, Clone, PartialEq)]
struct Totals {
    /// Indexed like `Mode::ALL`.
    violating: [i32; 3],
    /// Pods failing each check, per (mode as in `Mode::ALL`, check as in `CheckId::ALL`),
    /// sorted and without zeros: most namespaces fail a few checks, and every check of every
    /// mode was 228 bytes a namespace.
    by_check: Vec<((u8, u8), i32)>,
    privileged: i64,
}

impl Totals {
    /// Counts `e` in (`sign` 1) or out (-1).
    fn count<P>(&mut self, e: &Entry<P>, sign: i32) {
        self.privileged += i64::from(sign) * i64::from(e.privileged);
        for (slot, checks) in e.checks.iter().enumerate() {
            if checks.is_empty() {
                continue;
            }
            self.violating[slot] += sign;
            for id in checks.iter() {
                self.add((slot as u8, id as u8), sign);
            }
        }
    }

    fn add(&mut self, key: (u8, u8), n: i32) {
        match self.by_check.binary_search_by_key(&key, |(k, _)| *k) {
            Ok(i) => {
                self.by_check[i].1 += n;
                if self.by_check[i].1 == 0 {
                    self.by_check.remove(i);
                }
            }
            Err(i) => self.by_check.insert(i, (key, n)),
        }
    }

    /// The failing checks of mode `slot` and their counts.
    fn failing(&self, slot: usize) -> impl Iterator<Item = (CheckId, i32)> + '_ {
        self.by_check
            .iter()
            .filter(move |((s, _), _)| usize::from(*s) == slot)
            .map(|((_, id), n)| (CheckId::ALL[usize::from(*id)], *n))
    }

    fn of<'a, P: 'a>(entries: impl Iterator<Item = &'a Entry<P>>) -> Totals {
        let mut t = Totals::default();
        for e in entries {
            t.count(e, 1);
        }
        t
    }
}

/// One Pod of an initial list, as it waits for the list to complete: the namespace, owner and
/// container names shared with the other Pods of its namespace, owner and template (at 150,000
/// Pods, owned `String`s per Pod made the waiting list ~27 MB next to the index it becomes).
#[derive(Debug)]
pub struct Listed<P> {
    pub ns: Arc<str>,
    pub name: Box<str>,
    pub pod: Arc<P>,
    pub names: Arc<Box<str>>,
    /// The controller as `Kind/name`.
    pub owner: Option<Arc<str>>,
}

/// The policy of each namespace, shared by the indexes one pass feeds (the Pods' and each
/// workload kind's): eight copies of 10,000 entries were ~8.5 MB.
pub type Policies = HashMap<String, Policy>;

#[derive(Debug)]
pub struct PodIndex<P> {
    /// Per namespace with Pods (names as boxed strings: 16 bytes a key instead of 24).
    pods: BTreeMap<String, Namespace<P>>,
    policies: Arc<Policies>,
    shared: Interner<P>,
    /// Container names, set apart from the projections ([`Evaluate::take_names`]).
    names: Interner<Box<str>>,
    /// Owner names, one allocation each, shared by their Pods.
    owners: HashSet<Arc<str>>,
    /// The server whose verdicts the index keeps (its version, its exempt RuntimeClasses).
    admission: Arc<Admission>,
}

impl<P> Default for PodIndex<P> {
    fn default() -> Self {
        PodIndex {
            pods: BTreeMap::new(),
            policies: Arc::default(),
            shared: Interner::default(),
            names: Interner::default(),
            owners: HashSet::new(),
            admission: Arc::default(),
        }
    }
}

/// A violating Pod in one mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violator<'a> {
    pub pod: &'a str,
    pub checks: CheckSet,
    pub privileged: usize,
    /// The Pod's controller as `Kind/name`.
    pub owner: Option<&'a str>,
}

/// Violating Pods counted, in total and per failing check.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub pods: i32,
    /// Counted by static id, owned once by the caller: at 50k Pods, a String per violation per
    /// check was most of the time of a status.
    pub by_check: BTreeMap<&'static str, i32>,
}

impl Tally {
    pub fn add(&mut self, v: &Violator<'_>) {
        self.pods += 1;
        for check in v.checks.ids() {
            *self.by_check.entry(check).or_default() += 1;
        }
    }
}

impl<P: Evaluate + Hash + Eq + Clone> PodIndex<P> {
    /// Adds or replaces a running Pod. Returns whether anything the index reports changed: most
    /// Pod updates are status changes that leave the projection as it was.
    pub fn apply(&mut self, ns: &str, name: &str, pod: P) -> bool {
        self.apply_owned(ns, name, pod, None)
    }

    /// [`PodIndex::apply`] for a Pod with a controller (`Kind/name`).
    pub fn apply_owned(&mut self, ns: &str, name: &str, mut pod: P, owner: Option<&str>) -> bool {
        let names = pod.take_names();
        let current = self.pods.get(ns).and_then(|n| n.get(name));
        if current
            .is_some_and(|e| *e.pod == pod && *e.names == names && e.owner.as_deref() == owner)
        {
            return false;
        }
        let pod = (self.shared.intern(pod), self.names.intern(names));
        let owner = owner.map(|o| self.owner(o));
        let entry = Entry::new(
            pod,
            &self.policy(ns),
            &mut Memo::new(&self.admission),
            owner,
        );
        if !self.pods.contains_key(ns) {
            self.pods.insert(ns.to_owned(), Namespace::default());
        }
        let namespace = self.pods.get_mut(ns).expect("inserted above");
        namespace.totals.count(&entry, 1);
        let (old, new) = match namespace.find(name) {
            Ok(i) => {
                let old = std::mem::replace(&mut namespace.pods[i].1, entry);
                (old, &namespace.pods[i].1)
            }
            Err(i) => {
                namespace.pods.insert(i, (name.into(), entry));
                return true;
            }
        };
        namespace.totals.count(&old, -1);
        let changed =
            old.checks != new.checks || old.privileged != new.privileged || old.owner != new.owner;
        self.shared.release(old.pod);
        self.names.release(old.names);
        self.release_owner(old.owner);
        changed
    }

    /// Drops an owner name no Pod uses any more (two references left: `owner` and the set's).
    fn release_owner(&mut self, owner: Option<Arc<str>>) {
        if let Some(owner) = owner
            && Arc::strong_count(&owner) == 2
        {
            self.owners.remove(&owner);
        }
    }

    /// The shared allocation of an owner name.
    fn owner(&mut self, owner: &str) -> Arc<str> {
        if let Some(shared) = self.owners.get(owner) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(owner);
        self.owners.insert(Arc::clone(&shared));
        shared
    }

    /// Returns whether the Pod was there.
    pub fn delete(&mut self, ns: &str, name: &str) -> bool {
        let Some(namespace) = self.pods.get_mut(ns) else {
            return false;
        };
        let Ok(i) = namespace.find(name) else {
            return false;
        };
        let (_, entry) = namespace.pods.remove(i);
        if namespace.pods.is_empty() {
            self.pods.remove(ns);
        } else {
            namespace.totals.count(&entry, -1);
            if namespace.pods.capacity() > 4 * namespace.pods.len() {
                namespace.pods.shrink_to(2 * namespace.pods.len());
            }
        }
        self.shared.release(entry.pod);
        self.names.release(entry.names);
        self.release_owner(entry.owner);
        true
    }

    /// Replaces every Pod (after a relist); policies are kept. Takes projections or shared
    /// projections (as the initial list interns them while pages arrive).
    pub fn reset<Q: Into<Arc<P>>>(&mut self, pods: impl IntoIterator<Item = (String, String, Q)>) {
        self.reset_owned(
            pods.into_iter()
                .map(|(ns, name, pod)| (ns, name, pod, None)),
        );
    }

    /// [`PodIndex::reset`] with each Pod's controller (`Kind/name`).
    pub fn reset_owned<Q: Into<Arc<P>>>(
        &mut self,
        pods: impl IntoIterator<Item = (String, String, Q, Option<String>)>,
    ) {
        self.reset_apart(pods.into_iter().map(|(ns, name, pod, owner)| {
            let mut pod = Arc::unwrap_or_clone(pod.into());
            let names = pod.take_names();
            Listed {
                ns: ns.into(),
                name: name.into_boxed_str(),
                pod: Arc::new(pod),
                names: Arc::new(names),
                owner: owner.map(Into::into),
            }
        }));
    }

    /// [`PodIndex::reset_owned`] for projections whose names were already taken apart
    /// ([`Evaluate::take_names`]), as the initial list interns them while pages arrive.
    pub fn reset_apart(&mut self, pods: impl IntoIterator<Item = Listed<P>>) {
        // The table keeps its entries until the sweep below: a relist mostly brings the same
        // projections back, and the memo needs every projection alive until then.
        self.pods.clear();
        let admission = Arc::clone(&self.admission);
        let mut memo = Memo::new(&admission);
        self.owners.clear();
        for Listed {
            ns,
            name,
            pod,
            names,
            owner,
        } in pods
        {
            let pod = (
                self.shared.intern_shared(pod),
                self.names.intern_shared(names),
            );
            let policy = self.policy(&ns);
            let owner = owner.map(|o| self.owner(&o));
            let entry = Entry::new(pod, &policy, &mut memo, owner);
            let namespace = match self.pods.get_mut(&*ns) {
                Some(namespace) => namespace,
                None => self.pods.entry(ns.to_string()).or_default(),
            };
            namespace.pods.push((name, entry));
        }
        drop(memo);
        for namespace in self.pods.values_mut() {
            namespace.sort();
            namespace.totals = Totals::of(namespace.entries());
        }
        self.shared.sweep();
        self.names.sweep();
        // Owners only a Pod dropped as a duplicate used.
        self.owners.retain(|o| Arc::strong_count(o) > 1);
    }

    /// Sets the policy Pods of `ns` are checked against, re-evaluating them when it changed.
    /// Returns whether it changed.
    pub fn set_policy(&mut self, ns: &str, policy: Policy) -> bool {
        if self.policy(ns) == policy {
            return false;
        }
        Arc::make_mut(&mut self.policies).insert(ns.to_owned(), policy);
        self.reevaluate(ns, &mut Memo::new(&Arc::clone(&self.admission)));
        true
    }

    /// Takes `policies` (shared with other indexes), re-evaluating the Pods of the namespaces
    /// whose policy changed.
    pub fn set_policies(&mut self, policies: Arc<Policies>) {
        if Arc::ptr_eq(&self.policies, &policies) {
            return;
        }
        let old = std::mem::replace(&mut self.policies, policies);
        let changed: Vec<String> = self
            .pods
            .keys()
            .filter(|ns| old.get(*ns) != self.policies.get(*ns))
            .cloned()
            .collect();
        drop(old);
        let admission = Arc::clone(&self.admission);
        let mut memo = Memo::new(&admission);
        for ns in changed {
            self.reevaluate(&ns, &mut memo);
        }
    }

    /// The Pods of `ns` checked against its policy again.
    fn reevaluate(&mut self, ns: &str, memo: &mut Memo<'_>) {
        let policy = self.policy(ns);
        if let Some(namespace) = self.pods.get_mut(ns) {
            for (_, entry) in &mut namespace.pods {
                entry.checks = memo.all_modes(&entry.pod, &policy);
            }
            namespace.totals = Totals::of(namespace.entries());
        }
    }

    /// Sets the server the verdicts are those of, re-evaluating every Pod when it changed (a
    /// reconnect to an upgraded API server). Returns whether it changed.
    pub fn set_admission(&mut self, admission: Arc<Admission>) -> bool {
        if *self.admission == *admission {
            return false;
        }
        self.admission = admission;
        let mut memo = Memo::new(&self.admission);
        for (ns, namespace) in &mut self.pods {
            let policy = self.policies.get(ns).copied().unwrap_or_default();
            for (_, entry) in &mut namespace.pods {
                entry.checks = memo.all_modes(&entry.pod, &policy);
            }
            namespace.totals = Totals::of(namespace.entries());
        }
        true
    }
}

impl<P: Evaluate> PodIndex<P> {
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    pub fn policy(&self, ns: &str) -> Policy {
        self.policies.get(ns).copied().unwrap_or(Policy::DEFAULT)
    }

    /// The policies Pods are checked against, to share with other indexes ([`Self::set_policies`]).
    pub fn policies(&self) -> &Arc<Policies> {
        &self.policies
    }

    /// Sorted names of the Pods in `ns` that violate `level` (whatever the namespace policy).
    pub fn blocking(&self, ns: &str, level: LevelVersion) -> Vec<String> {
        let mut memo = Memo::new(&self.admission);
        self.pods
            .get(ns)
            .into_iter()
            .flat_map(|n| &n.pods)
            .filter(|(_, e)| !memo.checks(&e.pod, level).is_empty())
            .map(|(name, _)| (**name).to_owned())
            .collect()
    }

    /// Pods of `ns` violating the namespace policy in `mode`, sorted by name.
    pub fn violators(&self, ns: &str, mode: Mode) -> impl Iterator<Item = Violator<'_>> {
        let slot = mode.index();
        self.pods
            .get(ns)
            .into_iter()
            .flat_map(|n| &n.pods)
            .filter(move |(_, e)| !e.checks[slot].is_empty())
            .map(move |(name, e)| Violator {
                pod: name,
                checks: e.checks[slot],
                privileged: e.privileged as usize,
                owner: e.owner.as_deref(),
            })
    }

    /// The Pods of `ns` violating the namespace policy in `mode`, counted.
    pub fn tally(&self, ns: &str, mode: Mode) -> Tally {
        let Some(totals) = self.totals(ns) else {
            return Tally::default();
        };
        let slot = mode.index();
        Tally {
            pods: totals.violating[slot],
            by_check: totals
                .failing(slot)
                .map(|(id, n)| (id.as_str(), n))
                .collect(),
        }
    }

    /// How many checks fail for some Pod of `ns` in `mode` (the length of its tally's
    /// `by_check`), without building the tally.
    pub fn failing_check_count(&self, ns: &str, mode: Mode) -> usize {
        self.totals(ns)
            .map_or(0, |t| t.failing(mode.index()).count())
    }

    /// The admission message for one Pod in `mode`, recomputed (only samples need it).
    pub fn message(&self, ns: &str, pod: &str, mode: Mode) -> Option<String> {
        let entry = self.pods.get(ns)?.get(pod)?;
        // The projection as the Pod has it, names included.
        let whole = entry.pod.with_names(&entry.names);
        let verdict = judge(
            whole.as_ref().unwrap_or(&entry.pod),
            self.policy(ns).get(mode),
            &self.admission,
        );
        (!verdict.allowed()).then_some(verdict.message)
    }

    pub fn privileged_containers(&self, ns: &str) -> usize {
        self.totals(ns)
            .map_or(0, |t| usize::try_from(t.privileged).unwrap_or(0))
    }

    fn totals(&self, ns: &str) -> Option<&Totals> {
        self.pods.get(ns).map(|n| &n.totals)
    }

    pub fn pod_count(&self, ns: &str) -> usize {
        self.pods.get(ns).map_or(0, |n| n.pods.len())
    }

    /// Namespaces that hold Pods, sorted.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.pods.keys().map(String::as_str)
    }

    /// Distinct projections held for the Pods.
    pub fn shared_projections(&self) -> usize {
        self.shared.len()
    }
}

#[cfg(test)]
pub(crate) mod tests;
