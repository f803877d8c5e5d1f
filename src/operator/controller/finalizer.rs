//! Our finalizer: kept exactly on profiles with `deletionPolicy: Remove`, and taken off a deleted
//! one once the labels it must take back are off (see [`release_targets`]).

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tracing::{info, warn};

use super::context::Context;
use crate::operator::crd::{DeletionPolicy, FINALIZER, PodSecurityProfile};
use crate::operator::error::Error;
use crate::operator::labels::{Cluster, release_targets};

/// Adds or removes our finalizer where it is missing or due to go. Returns the number of failed
/// writes.
pub(super) async fn update(ctx: &Context, cluster: &Cluster<'_>) -> usize {
    if ctx.fence.check().is_err() {
        return 0;
    }
    let api: Api<PodSecurityProfile> = Api::all(ctx.client.clone());
    let mut failures = 0;
    for p in cluster.profiles {
        let wants = !p.deleting() && p.spec.deletion_policy == DeletionPolicy::Remove;
        if p.has_finalizer() == wants {
            continue;
        }
        // Hold on while any namespace to release still carries labels we own (the store shows
        // our release landed; a failed release is retried by a later pass).
        if p.releasing() && !release_targets(p, cluster).is_empty() {
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
                let e = Error::from(e);
                failures += 1;
                warn!(profile = %p.name_any(), error = %e, "updating finalizer");
                ctx.metrics.error("podsecurityprofile", &e);
            }
        }
    }
    failures
}
