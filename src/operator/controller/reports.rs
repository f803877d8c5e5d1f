//! The policy report writer (`--reports`): after each pass, the report of every governed namespace
//! ([`crate::operator::reports`]) is applied (server-side apply, field manager `pss-operator`)
//! when its content digest differs from what was last written, and the report of a namespace no
//! longer governed is deleted. What was written is known from the reports' digest annotation,
//! read once at start: an unchanged restart writes nothing. Writes go through the client's write
//! gate like every other write (only a confirmed leader's leave the process).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use tracing::{debug, info, warn};

use super::context::Context;
use crate::operator::MANAGER;
use crate::operator::error::Error;
use crate::operator::labels::governs;
use crate::operator::reports::{Format, HASH_ANNOTATION, MANAGED_BY, REPORT_NAME, Wanted, report};

/// At most one round of reports per interval (passes can run several times a second).
const INTERVAL: Duration = Duration::from_secs(1);
/// How often reports are checked when no pass happened (retrying failed writes), and discovery
/// is repeated while no report CRD is served.
const RECHECK: Duration = Duration::from_secs(30);

/// The first format of `wanted` whose resource the API server serves.
async fn discover(client: &Client, wanted: Wanted) -> Result<Option<Format>, kube::Error> {
    for &format in wanted.candidates() {
        let (group, version) = format.group_version();
        match client
            .list_api_group_resources(&format!("{group}/{version}"))
            .await
        {
            Ok(list) if list.resources.iter().any(|r| r.name == format.plural()) => {
                return Ok(Some(format));
            }
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// What the reports the operator wrote say they hold: namespace -> content digest.
async fn written(client: &Client, format: Format) -> Result<HashMap<String, String>, kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &format.api_resource());
    let list = api
        .list(&ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|r| r.metadata.name.as_deref() == Some(REPORT_NAME))
        .filter_map(|r| {
            let ns = r.metadata.namespace?;
            let hash = r.metadata.annotations?.remove(HASH_ANNOTATION)?;
            Some((ns, hash))
        })
        .collect())
}

pub(super) async fn report_loop(ctx: Arc<Context>, wanted: Wanted) {
    let format = loop {
        match discover(&ctx.client, wanted).await {
            Ok(Some(f)) => break f,
            Ok(None) => warn!(
                reports = ?wanted,
                retry_in = ?RECHECK,
                "no policy report CRD is served (openreports.io Report, wgpolicyk8s.io PolicyReport): no reports until one is installed"
            ),
            Err(e) => warn!(error = %e, retry_in = ?RECHECK, "discovering the policy report CRDs"),
        }
        tokio::time::sleep(RECHECK).await;
    };
    let mut last = loop {
        match written(&ctx.client, format).await {
            Ok(w) => break w,
            Err(e) => {
                warn!(error = %e, retry_in = ?RECHECK, "listing the reports pss-operator wrote");
                ctx.metrics.error("reports", &Error::Kube(e));
                tokio::time::sleep(RECHECK).await;
            }
        }
    };
    info!(%format, kind = format.kind(), existing = last.len(), "writing policy reports");
    let mut pictures = ctx.pictures.subscribe();
    pictures.mark_changed();
    loop {
        tokio::select! {
            changed = pictures.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RECHECK) => {},
        }
        let next = tokio::time::Instant::now() + INTERVAL;
        let Some(picture) = pictures.borrow_and_update().clone() else {
            continue;
        };
        let governed: BTreeSet<String> = picture
            .plans
            .values()
            .filter(|p| governs(p))
            .map(|p| p.name.clone())
            .collect();
        let changed: Vec<_> = {
            let index = ctx.index.read().await;
            let templates = ctx.templates.read().await;
            governed
                .iter()
                .map(|ns| (ns, report(format, ns, &index, &templates)))
                .filter(|(ns, (_, hash))| last.get(*ns) != Some(hash))
                .map(|(ns, (object, hash))| (ns.clone(), object, hash))
                .collect()
        };
        let ar = format.api_resource();
        for (ns, object, hash) in changed {
            let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
            match api
                .patch(
                    REPORT_NAME,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&object),
                )
                .await
            {
                Ok(_) => {
                    debug!(namespace = %ns, "policy report written");
                    ctx.metrics.report_write("apply");
                    last.insert(ns, hash);
                }
                Err(e) => {
                    warn!(namespace = %ns, error = %e, "writing the policy report");
                    ctx.metrics.error("reports", &Error::Kube(e));
                }
            }
        }
        let gone: Vec<String> = last
            .keys()
            .filter(|ns| !governed.contains(*ns))
            .cloned()
            .collect();
        for ns in gone {
            let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
            match api.delete(REPORT_NAME, &DeleteParams::default()).await {
                Ok(_) => {
                    debug!(namespace = %ns, "policy report deleted: the namespace is no longer governed");
                    ctx.metrics.report_write("delete");
                    last.remove(&ns);
                }
                // Deleted with its namespace, or by someone else: nothing left to do.
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    last.remove(&ns);
                }
                Err(e) => {
                    warn!(namespace = %ns, error = %e, "deleting the policy report");
                    ctx.metrics.error("reports", &Error::Kube(e));
                }
            }
        }
        tokio::time::sleep_until(next).await;
    }
}
