//! The API server's version: what `latest` means in every verdict. Read before the first pass,
//! again whenever a watch lost its connection (the server may have been upgraded meanwhile), and
//! every few minutes; a change re-evaluates every Pod and template and re-plans every namespace.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tracing::{debug, info, warn};

use super::context::{Context, Dirty};
use crate::pss::{Admission, KubeVersion, NEWEST_KNOWN_MINOR};

/// How often the version is read when nothing suggests a change.
const RECHECK: Duration = Duration::from_secs(300);
/// How soon a failed read is retried (the server is likely restarting).
const RETRY: Duration = Duration::from_secs(5);

/// The server's version, from `/version` (readable by every authenticated client).
pub(super) async fn fetch(client: &Client) -> Result<KubeVersion, String> {
    let info = client
        .apiserver_version()
        .await
        .map_err(|e| format!("reading the API server's /version: {e}"))?;
    KubeVersion::from_server(&info.major, &info.minor, &info.git_version)
}

/// Reads the version until it succeeds (the operator cannot judge anything without it).
pub(super) async fn first(client: &Client) -> KubeVersion {
    loop {
        match fetch(client).await {
            Ok(kube) => return kube,
            Err(e) => {
                warn!(error = %e, retry_in = ?RETRY, "cannot read the Kubernetes version yet");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Makes `kube` the version every verdict is judged on: logged (the metrics and statuses of the
/// next pass show it), and when it changed,
/// every Pod and template re-evaluated and every namespace re-planned.
pub(super) async fn adopt(ctx: &Context, kube: KubeVersion) {
    let admission = Arc::new(Admission {
        kube,
        config: ctx.config.admission.clone(),
    });
    let changed = ctx
        .index
        .write()
        .await
        .set_admission(Arc::clone(&admission));
    ctx.templates.write().await.set_admission(&admission);
    if kube.is_known() {
        info!(kubernetes = %kube, "latest means the API server's own version");
    } else {
        warn!(
            kubernetes = %kube,
            newest_known = NEWEST_KNOWN_MINOR,
            "the API server is newer than the newest Pod Security version this build knows: Pods are evaluated with v1.{NEWEST_KNOWN_MINOR}'s checks; upgrade pss-operator"
        );
    }
    if changed {
        ctx.shared().dirty = Dirty::All;
        ctx.wake.notify_one();
    }
}

/// Follows the version for as long as the operator runs.
pub(super) async fn follow(ctx: Arc<Context>, mut current: KubeVersion) {
    let mut wait = RECHECK;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {},
            _ = ctx.reconnected.notified() => {},
        }
        match fetch(&ctx.client).await {
            Ok(kube) => {
                wait = RECHECK;
                if kube != current {
                    info!(from = %current, to = %kube, "the API server's version changed");
                    adopt(&ctx, kube).await;
                    current = kube;
                }
            }
            Err(e) => {
                debug!(error = %e, "re-reading the version");
                wait = RETRY;
            }
        }
    }
}
