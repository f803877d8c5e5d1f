//! [`Readable`]: a watched object, or why it could not be read, decoded once.
//!
//! kube's `DeserializeGuard` does the same job by buffering every object as a `serde_value`
//! tree, cloning the tree and decoding the clone (a profile of the operator while 10,000
//! Deployments were annotated showed `serde_value` trees and `BTreeMap` clones on top). Here the
//! object's JSON text is kept as it arrived (`RawValue`: checked, not parsed into a tree) and
//! decoded once; only an object that fails is decoded a second time, for its metadata. At 5,000
//! namespaces / 110,000 Pods: 0.25 -> 0.16 ms of CPU per Deployment update, 10.7 -> 7.9 s over
//! the start (BENCHMARKS.md, session 9).
//!
//! It needs serde_json's own deserializer (kube decodes lists and watch events with
//! `serde_json::from_str`); any other gets an error naming this.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::error_boundary::InvalidObject;
use kube::core::{PartialObjectMeta, Resource};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::manifest::strip_location;

/// The object, or (when it does not decode as `K`) its metadata and the decoding error.
#[derive(Debug, Clone)]
pub struct Readable<K>(pub Result<K, InvalidObject>);

impl<'de, K> Deserialize<'de> for Readable<K>
where
    K: DeserializeOwned + Resource,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer).map_err(|e| {
            D::Error::custom(format!("{e} (Readable needs serde_json's deserializer)"))
        })?;
        match serde_json::from_str::<K>(raw.get()) {
            Ok(k) => Ok(Readable(Ok(k))),
            Err(e) => {
                let PartialObjectMeta { metadata, .. } =
                    serde_json::from_str::<PartialObjectMeta<K>>(raw.get())
                        .map_err(D::Error::custom)?;
                Ok(Readable(Err(InvalidObject {
                    error: strip_location(&e),
                    metadata,
                })))
            }
        }
    }
}

impl<K: Resource> Resource for Readable<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        self.0.as_ref().map_or_else(|e| &e.metadata, K::meta)
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0
            .as_mut()
            .map_or_else(|e| &mut e.metadata, K::meta_mut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::core::DeserializeGuard;
    use kube::core::WatchEvent;

    const BAD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"odd","namespace":"ns"},
        "spec":{"containers":"not-a-list"}}"#;
    const GOOD: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"ok","namespace":"ns"},
        "spec":{"containers":[{"name":"app","image":"nginx","securityContext":{"privileged":true}}]}}"#;

    #[test]
    fn reads_what_kube_s_guard_reads_and_names_what_it_cannot() {
        let ours: Readable<Pod> = serde_json::from_str(GOOD).expect("decodes");
        let kube: DeserializeGuard<Pod> = serde_json::from_str(GOOD).expect("decodes");
        assert_eq!(ours.0.expect("readable"), kube.0.expect("readable"));

        let ours: Readable<Pod> = serde_json::from_str(BAD).expect("decodes");
        let kube: DeserializeGuard<Pod> = serde_json::from_str(BAD).expect("decodes");
        let (ours, kube) = (
            ours.0.expect_err("unreadable"),
            kube.0.expect_err("unreadable"),
        );
        assert_eq!(ours.metadata, kube.metadata);
        assert_eq!(ours.metadata.name.as_deref(), Some("odd"));
        // serde's own words (kube's guard words it as serde_value does), without a position.
        assert_eq!(
            ours.error,
            r#"invalid type: string "not-a-list", expected a sequence"#
        );
    }

    #[test]
    fn decodes_inside_watch_events_and_lists() {
        let line = format!(r#"{{"type":"MODIFIED","object":{BAD}}}"#);
        match serde_json::from_str::<WatchEvent<Readable<Pod>>>(&line).expect("an event") {
            WatchEvent::Modified(r) => assert_eq!(r.meta().name.as_deref(), Some("odd")),
            other => panic!("{other:?}"),
        }
        let list = format!(r#"{{"items":[{GOOD},{BAD}]}}"#);
        #[derive(Deserialize)]
        struct List {
            items: Vec<Readable<Pod>>,
        }
        let list: List = serde_json::from_str(&list).expect("a list");
        assert!(list.items[0].0.is_ok() && list.items[1].0.is_err());
    }

    #[test]
    fn an_object_without_readable_metadata_is_an_error_not_a_panic() {
        let e = serde_json::from_str::<Readable<Pod>>(r#"{"metadata":"x","spec":1}"#)
            .expect_err("nothing to name it by");
        assert!(e.to_string().contains("invalid type"), "{e}");
    }
}
