//! What the namespace store keeps of each namespace: its name, uid, resourceVersion and labels,
//! which PSA labels and whether the record our field manager owns, and our ledger annotation.
//! At 10,000 namespaces the `PartialObjectMeta` the store held before took ~4.4 KB each (most
//! of it our managedFields entry, a JSON tree of field paths); this takes about a fifth, and
//! its labels are shared (not copied) with each pass's cache and pictures.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::Lookup;
use kube::runtime::watcher;

use crate::operator::desired::Labels;
use crate::operator::interned::Interner;
use crate::operator::labels::{Owned, owned};
use crate::operator::record::ANNOTATION;

/// A namespace as the operator keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNamespace {
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// All its labels: profiles select namespaces by any of them.
    pub labels: Arc<Labels>,
    /// What our field manager owns there (read from managedFields when the event arrived).
    pub owned: Arc<Owned>,
    /// Our ledger annotation ([`ANNOTATION`]), as found: shared, as the namespaces of one
    /// profile mostly hold the same one (~250 bytes each).
    pub record: Option<Arc<Box<str>>>,
}

/// Few distinct owned sets exist (none, or the labels of a profile's modes with the record).
static OWNED: LazyLock<Interner<Owned>> = LazyLock::new(Interner::new);
static RECORDS: LazyLock<Interner<Box<str>>> = LazyLock::new(Interner::new);

impl From<PartialObjectMeta<Namespace>> for StoredNamespace {
    fn from(n: PartialObjectMeta<Namespace>) -> Self {
        let meta = n.metadata;
        let owned = OWNED.intern(owned(&meta.managed_fields));
        StoredNamespace {
            name: meta.name.unwrap_or_default(),
            uid: meta.uid,
            resource_version: meta.resource_version,
            labels: Arc::new(meta.labels.unwrap_or_default()),
            owned,
            record: meta
                .annotations
                .and_then(|mut a| a.remove(ANNOTATION))
                .map(|r| RECORDS.intern(r.into_boxed_str())),
        }
    }
}

/// A watch event of the metadata watch, projected.
pub fn project(
    ev: watcher::Event<PartialObjectMeta<Namespace>>,
) -> watcher::Event<StoredNamespace> {
    use watcher::Event::*;
    match ev {
        Apply(n) => Apply(n.into()),
        Delete(n) => Delete(n.into()),
        Init => Init,
        InitApply(n) => InitApply(n.into()),
        InitDone => InitDone,
    }
}

impl Lookup for StoredNamespace {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        "Namespace".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "namespaces".into()
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(self.name.as_str().into())
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        None
    }

    // The store's keys would copy these into each key's `extra`, which neither its hash nor its
    // equality reads; the operator reads them from the stored namespace.
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::MANAGER;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    use kube::core::{ObjectMeta, PartialObjectMetaExt as _};
    use serde_json::json;

    #[test]
    fn keeps_what_the_pass_reads_and_drops_the_rest() {
        let ours = ManagedFieldsEntry {
            manager: Some(MANAGER.into()),
            operation: Some("Apply".into()),
            fields_v1: Some(FieldsV1(json!({"f:metadata": {
                "f:labels": {"f:pod-security.kubernetes.io/enforce": {}, "f:team": {}},
                "f:annotations": {"f:pss-operator.io/applied": {}},
            }}))),
            ..Default::default()
        };
        let n: PartialObjectMeta<Namespace> = ObjectMeta {
            name: Some("apps".into()),
            uid: Some("u-1".into()),
            resource_version: Some("42".into()),
            labels: Some([("team".into(), "a".into())].into()),
            annotations: Some(
                [
                    (ANNOTATION.into(), "{}".into()),
                    ("other".into(), "x".into()),
                ]
                .into(),
            ),
            managed_fields: Some(vec![ours]),
            ..Default::default()
        }
        .into_request_partial();
        let stored = StoredNamespace::from(n);
        assert_eq!(stored.name, "apps");
        assert_eq!(stored.uid.as_deref(), Some("u-1"));
        assert_eq!(stored.resource_version.as_deref(), Some("42"));
        assert_eq!(*stored.labels, Labels::from([("team".into(), "a".into())]));
        assert_eq!(stored.record.as_deref().map(|r| &**r), Some("{}"));
        assert_eq!(
            *stored.owned,
            Owned {
                labels: ["pod-security.kubernetes.io/enforce".to_owned()].into(),
                record: true,
            }
        );
        let key = stored.to_object_ref(());
        assert_eq!(key.name, "apps");
        assert_eq!(key.namespace, None);
    }
}
