//! The reporter: from the latest pass's picture, publishes the metric values and writes the
//! profile statuses that changed, at most every `REPORT_INTERVAL`. It runs beside the passes:
//! at 50k Pods computing them takes ~100-250 ms, which a label repair must not wait for.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::operator::readable::Readable;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::context::{Context, MAX_RETRY, Picture};
use crate::operator::MANAGER;
use crate::operator::backoff::Backoff;
use crate::operator::crd::{PodSecurityProfile, PodSecurityProfileStatus};
use crate::operator::error::Error;
use crate::operator::metrics::Gauges;
use crate::operator::status::{Observed, profile_status, unreadable_status};

/// Passes can run several times a second (100 drifts/s) and each report recomputes every status
/// and metric: at most one report per interval.
const REPORT_INTERVAL: Duration = Duration::from_millis(250);

/// Reports each picture; pictures that arrive while one is being reported are coalesced into
/// the newest.
pub(super) async fn report_loop(
    ctx: Arc<Context>,
    mut pictures: watch::Receiver<Option<Arc<Picture>>>,
) {
    let mut retry = Backoff::new(Duration::from_secs(1), MAX_RETRY);
    while pictures.changed().await.is_ok() {
        let next = tokio::time::Instant::now() + REPORT_INTERVAL;
        let Some(latest) = pictures.borrow_and_update().clone() else {
            continue;
        };
        let started = std::time::Instant::now();
        let failures = report(&ctx, &latest).await;
        debug!(
            report_ms = started.elapsed().as_millis() as u64,
            "status and metrics reported"
        );
        if failures > 0 {
            let delay = retry.failed();
            warn!(failures, retry_in = ?delay, "some status writes failed; retrying");
            tokio::time::sleep(delay).await;
            pictures.mark_changed();
        } else {
            retry.succeeded();
        }
        tokio::time::sleep_until(next).await;
    }
}

/// Metrics and statuses of one picture. Returns how many writes failed.
async fn report(ctx: &Arc<Context>, picture: &Arc<Picture>) -> usize {
    let _timer = ctx.metrics.timer("podsecurityprofile");
    let now = Time(
        Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()),
    );
    let Some(statuses) = compute(ctx, picture, &now).await else {
        return 0;
    };
    let unreadable = unreadable_statuses(ctx, picture, &now);
    match ctx.fence.check() {
        Ok(()) => {}
        // Stepping down: nothing more to write.
        Err(Error::LeadershipLost) => return 0,
        // The lease is not confirmed yet: written once it is (retried like a failed write).
        Err(_) => return 1,
    }
    let mut failures = 0;
    let api: Api<PodSecurityProfile> = Api::all(ctx.client.clone());
    for (name, status) in statuses {
        let result = apply_status(&api, &name, &status).await;
        failures += status_written(ctx, &name, result);
    }
    // Server-side apply needs the stored object to match the schema, which an unreadable one
    // does not: a merge patch of the status still works.
    for (name, key, status) in unreadable {
        let patch = json!({ "status": status });
        let result = Api::<Readable<PodSecurityProfile>>::all(ctx.client.clone())
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        if status_written(ctx, &name, result) == 0 {
            ctx.shared().unreadable_written.insert(name, key);
        } else {
            failures += 1;
        }
    }
    failures
}

/// Publishes the metrics, then returns the statuses that changed, computed on a blocking thread:
/// at 10,000 namespaces each takes ~35 ms of CPU (more under load), which the label writes and
/// the watches must not wait for, and the metrics not for the statuses. `None` when the
/// computation was cancelled.
async fn compute(
    ctx: &Arc<Context>,
    picture: &Arc<Picture>,
    now: &Time,
) -> Option<Vec<(String, PodSecurityProfileStatus)>> {
    let (drift, apply_errors) = {
        let shared = ctx.shared();
        (
            shared.ledger.drift().clone(),
            shared.ledger.apply_errors().clone(),
        )
    };
    let (ctx, r, now) = (ctx.clone(), picture.clone(), now.clone());
    let computed = tokio::task::spawn_blocking(move || {
        let index = ctx.index.blocking_read();
        let templates = ctx.templates.blocking_read();
        let obs = Observed {
            plans: &r.plans,
            labels: &r.observed,
            index: &index,
            templates: &templates,
            drift: &drift,
            apply_errors: &apply_errors,
        };
        let profile_names: HashSet<String> = r.profiles.iter().map(|p| p.name_any()).collect();
        ctx.metrics.publish(Gauges::of(&obs), |ns, profile| {
            r.plans.contains_key(ns) && profile_names.contains(profile)
        });
        let statuses: Vec<_> = r
            .profiles
            .iter()
            .filter_map(|p| {
                let view = r.views.get(&p.name_any())?;
                let status = profile_status(p, view.as_ref().map_err(String::as_str), &obs, &now);
                (p.status.as_ref() != Some(&status)).then(|| (p.name_any(), status))
            })
            .collect();
        statuses
    })
    .await;
    match computed {
        Ok(computed) => Some(computed),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
    }
}

/// The Degraded statuses of unreadable profiles not written yet for their generation and error.
fn unreadable_statuses(
    ctx: &Context,
    picture: &Picture,
    now: &Time,
) -> Vec<(String, (Option<i64>, String), PodSecurityProfileStatus)> {
    let mut out = Vec::new();
    let mut shared = ctx.shared();
    let names: HashSet<String> = picture
        .unreadable
        .iter()
        .filter_map(|u| u.metadata.name.clone())
        .collect();
    shared.unreadable_written.retain(|n, _| names.contains(n));
    for invalid in &picture.unreadable {
        let Some(name) = invalid.metadata.name.clone() else {
            continue;
        };
        let key = (invalid.metadata.generation, invalid.error.clone());
        if shared.unreadable_written.get(&name) != Some(&key) {
            warn!(profile = %name, error = %invalid.error, "profile cannot be read: marked Degraded, skipped");
            let status = unreadable_status(invalid.metadata.generation, &invalid.error, now);
            out.push((name, key, status));
        }
    }
    out
}

/// Server-side applies the status subresource (only `status`, our field manager).
pub(super) async fn apply_status(
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
            let e = Error::from(e);
            warn!(profile = %name, error = %e, "writing status");
            ctx.metrics.error("podsecurityprofile", &e);
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::serve_one;
    use super::*;
    use kube::Client;

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
}
