//! What the controller's tasks share: the configuration, the stores the watches fill, the Pod
//! index, the state behind one mutex, and the messages between the tasks.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::operator::readable::Readable;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::events::Event;
use kube::runtime::reflector::{self, Store};
use tokio::sync::{mpsc, watch};

use super::lists::{self, InitialLists};
use super::namespace_store::StoredNamespace;
use super::{events, writer};
use crate::operator::backoff::Backoff;
use crate::operator::crd::PodSecurityProfile;
use crate::operator::desired::{Exclusions, Labels, LabelsByNamespace, Plans, ProfileView};
use crate::operator::fence::Fence;
use crate::operator::index::PodIndex;
use crate::operator::labels::LabelWrite;
use crate::operator::ledger::Ledger;
use crate::operator::metrics::Metrics;
use crate::operator::pods::SlimPod;
use crate::operator::record::Record;
use crate::operator::workloads::TemplateIndex;
use crate::pss::AdmissionConfig;

/// The longest wait before retrying a failed write.
pub(super) const MAX_RETRY: Duration = Duration::from_secs(30);

pub struct Config {
    pub exclusions: Exclusions,
    /// The cluster's PodSecurity admission configuration (defaults, exemptions).
    pub admission: AdmissionConfig,
    /// Reported in Events (`reportingInstance`).
    pub identity: String,
    /// Whether writes may go out (see [`Fence`]); the same fence the client's write gate asks.
    pub fence: Arc<Fence>,
    /// Streamed or paginated initial lists (`--initial-lists`); `Auto` is resolved before the
    /// watches start ([`super::lists::resolve`]).
    pub initial_lists: InitialLists,
    /// Policy reports (`--reports`).
    pub reports: crate::operator::reports::Wanted,
}

pub(super) struct Context {
    pub client: Client,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// Guarded: a profile that no longer deserializes (stored before a schema change) is kept
    /// as an error and reported Degraded instead of breaking the watch.
    pub profiles: Store<Readable<PodSecurityProfile>>,
    pub namespaces: Store<StoredNamespace>,
    /// Apart from `shared`, and async: the reporter reads it for ~10-100 ms per report (50k
    /// Pods) while passes plan beside it, and a task waiting for it must not hold up a thread
    /// the label writes need. Lock order: `index` before `shared`.
    pub index: tokio::sync::RwLock<PodIndex<SlimPod>>,
    /// The templates of the reported workloads, beside the Pod index for the same reasons.
    /// Lock order: `index`, then `templates`, then `shared`.
    pub templates: tokio::sync::RwLock<TemplateIndex<SlimPod>>,
    pub shared: Mutex<Shared>,
    /// Wakes the pass loop.
    pub wake: tokio::sync::Notify,
    /// A watch lost its connection: the API server's version is read again.
    pub reconnected: tokio::sync::Notify,
    /// The client's write gate asks it before every write; tasks ask it too, to save a
    /// request that would be refused.
    pub fence: Arc<Fence>,
    /// Label writes, for the label writer.
    pub writes: writer::Queue,
    /// Events, for the poster: a pass never waits for them.
    pub events: events::Queue,
    /// The latest pass's picture, for the reporter.
    pub pictures: watch::Sender<Option<Arc<Picture>>>,
    /// True after the first complete pass.
    pub ready: Arc<AtomicBool>,
}

/// The receiving ends of [`Context`]'s channels, one per task that drains them.
pub(super) struct Receivers {
    pub writes: mpsc::UnboundedReceiver<QueuedWrite>,
    pub events: mpsc::Receiver<(ObjectReference, Event)>,
    pub pictures: watch::Receiver<Option<Arc<Picture>>>,
}

impl Context {
    /// The watcher configuration every watch starts from.
    pub fn watcher_config(&self) -> kube::runtime::watcher::Config {
        lists::base(self.config.initial_lists == InitialLists::Streaming)
    }

    pub fn new(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
        profiles: Store<Readable<PodSecurityProfile>>,
        namespaces: Store<StoredNamespace>,
    ) -> (Context, Receivers) {
        let (writes, to_write) = writer::Queue::new();
        let (events, to_post) = events::Queue::new();
        let (pictures, latest) = watch::channel(None);
        let ctx = Context {
            client,
            fence: config.fence.clone(),
            config,
            metrics,
            profiles,
            namespaces,
            index: Default::default(),
            templates: Default::default(),
            shared: Mutex::new(Shared::default()),
            wake: tokio::sync::Notify::new(),
            reconnected: tokio::sync::Notify::new(),
            writes,
            events,
            pictures,
            ready,
        };
        let receivers = Receivers {
            writes: to_write,
            events: to_post,
            pictures: latest,
        };
        (ctx, receivers)
    }

    pub fn shared(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters: the next relist resets it.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks a namespace for the next pass and wakes it.
    pub fn mark_dirty(&self, ns: &str) {
        self.shared().dirty.mark(ns);
        self.wake.notify_one();
    }

    pub fn stored_namespace(&self, ns: &str) -> Option<Arc<StoredNamespace>> {
        self.namespaces.get(&reflector::ObjectRef::new(ns))
    }

    /// The resourceVersion of the namespace as the store has it.
    pub fn stored_version(&self, ns: &str) -> Option<u64> {
        self.stored_namespace(ns)
            .and_then(|n| resource_version(n.resource_version.clone()))
    }

    pub fn namespace_uid(&self, ns: &str) -> Option<String> {
        self.stored_namespace(ns).and_then(|n| n.uid.clone())
    }
}

/// Mutable state shared by the watch tasks, the pass, the label writer and the reporter.
pub(super) struct Shared {
    /// The namespaces the next pass re-plans.
    pub dirty: Dirty,
    pub pods_synced: bool,
    pub profiles_synced: bool,
    pub namespaces_synced: bool,
    /// Per workload kind (indexed like `WorkloadKind::ALL`).
    pub workloads_synced: [bool; 7],
    pub ledger: Ledger,
    /// What our last label write returned, per namespace, until the namespace store has caught
    /// up with it: until then the store is older than our write, and its labels must not be
    /// mistaken for drift.
    pub unseen_writes: HashMap<String, Unseen>,
    /// Namespaces with a label write queued, running or waiting for its retry; with the labels
    /// a drift repair restores.
    pub in_flight: HashMap<String, Option<Arc<Labels>>>,
    pub write_retry: Backoff,
    /// (generation, error) last written to unreadable profiles, to write each once.
    pub unreadable_written: HashMap<String, (Option<i64>, String)>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            dirty: Dirty::default(),
            pods_synced: false,
            profiles_synced: false,
            namespaces_synced: false,
            workloads_synced: [false; 7],
            ledger: Ledger::default(),
            unseen_writes: HashMap::new(),
            in_flight: HashMap::new(),
            write_retry: Backoff::new(Duration::from_secs(1), MAX_RETRY),
            unreadable_written: HashMap::new(),
        }
    }
}

impl Shared {
    /// The profiles and namespaces are listed: the labels can be planned, except where a
    /// `WhenCompliant` rollout waits for the Pods and templates (see `pass`).
    pub fn labels_synced(&self) -> bool {
        self.profiles_synced && self.namespaces_synced
    }

    /// Every initial list is in: plans, statuses and metrics are complete.
    pub fn synced(&self) -> bool {
        self.pods_synced
            && self.profiles_synced
            && self.namespaces_synced
            && self.workloads_synced.iter().all(|s| *s)
    }
}

/// The namespaces whose inputs changed since the last pass: their labels or managedFields (the
/// namespace watch), their Pods (the Pod index), or our write on them landed or is due for a
/// retry. `All` after a relist; a pass also plans all of them when the profiles changed and
/// every resync.
#[derive(Debug, Default, PartialEq)]
pub(super) enum Dirty {
    #[default]
    All,
    Some(HashSet<String>),
}

impl Dirty {
    pub fn mark(&mut self, ns: &str) {
        if let Dirty::Some(set) = self
            && !set.contains(ns)
        {
            set.insert(ns.to_owned());
        }
    }

    pub fn take(&mut self) -> Dirty {
        std::mem::replace(self, Dirty::Some(HashSet::new()))
    }
}

/// A label write with what its Events need.
pub(super) struct QueuedWrite {
    pub write: LabelWrite,
    pub uid: Option<String>,
    /// Announced with the other namespaces its profile labels in bulk, not by an Event of its own.
    pub bulk: Option<Arc<events::Bulk>>,
}

/// A namespace as our last write left it: its resourceVersion, labels and ledger record.
#[derive(Debug, Clone)]
pub(super) struct Unseen {
    pub version: u64,
    pub labels: Arc<Labels>,
    pub record: Option<Record>,
}

/// One pass's picture of profiles and namespaces, for the reporter.
pub(super) struct Picture {
    pub profiles: Vec<Arc<PodSecurityProfile>>,
    pub views: HashMap<String, Result<ProfileView, String>>,
    pub unreadable: Vec<InvalidObject>,
    pub plans: Plans,
    /// The namespaces' labels: the store's, or what our last write returned while the store
    /// has not shown it yet, or what a drift repair in flight restores.
    pub observed: LabelsByNamespace,
}

/// Resource versions are opaque to clients in general, but kube-apiserver's are etcd revisions:
/// numbers that only grow. Anything else is treated as unknown (never stale).
pub(super) fn resource_version(rv: Option<String>) -> Option<u64> {
    rv?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_takes_the_dirty_namespaces_and_starts_with_all() {
        let mut shared = Shared::default();
        assert_eq!(
            shared.dirty.take(),
            Dirty::All,
            "the first pass plans everything"
        );
        assert_eq!(shared.dirty.take(), Dirty::Some(HashSet::new()));
        shared.dirty.mark("a");
        shared.dirty.mark("b");
        shared.dirty.mark("a");
        assert_eq!(
            shared.dirty.take(),
            Dirty::Some(["a".into(), "b".into()].into())
        );
        // A relist marks everything; single namespaces marked after it change nothing.
        shared.dirty = Dirty::All;
        shared.dirty.mark("a");
        assert_eq!(shared.dirty.take(), Dirty::All);
    }

    #[test]
    fn resource_versions_compare_as_numbers_or_not_at_all() {
        assert_eq!(resource_version(Some("1234".into())), Some(1234));
        assert_eq!(resource_version(Some("opaque-v1".into())), None);
        assert_eq!(resource_version(None), None);
    }
}
