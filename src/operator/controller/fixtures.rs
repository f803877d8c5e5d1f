//! Test fixtures of the controller's unit tests: a mock API server that answers one request, and
//! a context whose client is never answered (for code that only books results).

use std::sync::Arc;
use std::time::Duration;

use crate::operator::readable::Readable;
use kube::Client;
use kube::runtime::reflector::{self, store::Writer};

use super::context::{Config, Context, Dirty};
use super::namespace_store::StoredNamespace;
use crate::operator::crd::PodSecurityProfile;
use crate::operator::desired::Exclusions;
use crate::operator::metrics::Metrics;

type Handle =
    tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<kube::client::Body>>;

/// Serves one request to `check`, answering with `response`.
pub async fn serve_one(
    mut handle: Handle,
    check: impl FnOnce(&http::Request<()>, serde_json::Value),
    response: serde_json::Value,
) {
    serve_next(&mut handle, check, response).await
}

/// Serves the next request to `check` (its body as JSON, `null` when it has none), answering
/// with `response`.
pub async fn serve_next(
    handle: &mut Handle,
    check: impl FnOnce(&http::Request<()>, serde_json::Value),
    response: serde_json::Value,
) {
    let (request, send) = handle.next_request().await.expect("one request");
    let (parts, body) = request.into_parts();
    let body = body.collect_bytes().await.expect("request body");
    let json: serde_json::Value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).expect("json body")
    };
    check(&http::Request::from_parts(parts, ()), json);
    let bytes = serde_json::to_vec(&response).expect("json");
    send.send_response(
        http::Response::builder()
            .body(kube::client::Body::from(bytes))
            .expect("response"),
    );
}

/// A context whose client is never answered (the code under test books results only), after its
/// first pass (nothing dirty), and the writer of its namespace store.
pub fn booking_context() -> (Arc<Context>, Writer<StoredNamespace>) {
    let (ctx, namespaces, _) = booking_context_with_profiles();
    (ctx, namespaces)
}

/// [`booking_context`], with the writer of its profile store.
pub fn booking_context_with_profiles() -> (
    Arc<Context>,
    Writer<StoredNamespace>,
    Writer<Readable<PodSecurityProfile>>,
) {
    let (mock, _) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let (profiles, profiles_writer) = reflector::store();
    let (namespaces, writer) = reflector::store();
    let config = Config {
        exclusions: Exclusions::default(),
        admission: Default::default(),
        identity: "test".into(),
        fence: Arc::new(crate::operator::fence::Fence::unfenced()),
        initial_lists: Default::default(),
        reports: Default::default(),
    };
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let (ctx, _) = Context::new(
        Client::new(mock, "default"),
        config,
        metrics,
        Default::default(),
        profiles,
        namespaces,
    );
    ctx.shared().dirty = Dirty::Some(Default::default());
    (Arc::new(ctx), writer, profiles_writer)
}

/// Whether the pass loop is woken within 50 ms.
pub async fn woken(ctx: &Context) -> bool {
    tokio::time::timeout(Duration::from_millis(50), ctx.wake.notified())
        .await
        .is_ok()
}
