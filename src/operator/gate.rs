//! The two client layers that make write fencing structural (see [`super::fence`]):
//!
//! - [`WriteGateLayer`], on the operator's client: every request that is not a read (`POST`,
//!   `PUT`, `PATCH`, `DELETE`: label applies, releases, status, finalizers, Events) asks the
//!   fence first, when its future is first polled, and is refused without leaving the process
//!   while the fence says no. Nothing the controller does can write around it: the client is
//!   the only way out.
//! - [`LeaseWatchLayer`], on the leader election's own client (never gated): a `PATCH` of our
//!   Lease answered with us as holder confirms the lease, as of when the request was sent.
//!
//! Build the operator's client without kube's default retry layer: it sits below this gate and
//! would resend a refused-in-time request later without asking the fence again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tower_layer::Layer;
use tower_service::Service;

use super::fence::{Fence, Refusal};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A request the write gate refused.
#[derive(Debug, Clone, Copy)]
pub struct Refused(pub Refusal);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "write refused by the fence: {}", self.0.into_error())
    }
}

impl std::error::Error for Refused {}

/// Whether a request changes something (anything but a read).
pub fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Reviews are POSTs that store nothing: every replica, leader or not, asks them to serve
/// `/metrics` to authorized readers (TokenReview, SubjectAccessReview).
fn is_review(path: &str) -> bool {
    path == "/apis/authentication.k8s.io/v1/tokenreviews"
        || path == "/apis/authorization.k8s.io/v1/subjectaccessreviews"
}

/// Refuses writes while the fence does (see the module documentation).
#[derive(Clone)]
pub struct WriteGateLayer {
    fence: Arc<Fence>,
}

impl WriteGateLayer {
    pub fn new(fence: Arc<Fence>) -> Self {
        WriteGateLayer { fence }
    }
}

impl<S> Layer<S> for WriteGateLayer {
    type Service = WriteGate<S>;

    fn layer(&self, inner: S) -> WriteGate<S> {
        WriteGate {
            inner,
            fence: self.fence.clone(),
        }
    }
}

#[derive(Clone)]
pub struct WriteGate<S> {
    inner: S,
    fence: Arc<Fence>,
}

impl<S, B> Service<Request<B>> for WriteGate<S>
where
    S: Service<Request<B>>,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let gated =
            (is_write(req.method()) && !is_review(req.uri().path())).then(|| self.fence.clone());
        let refused = |r: Refusal| Box::new(Refused(r)) as BoxError;
        if let Some(fence) = &gated
            && let Err(r) = fence.admit()
        {
            return Box::pin(std::future::ready(Err(refused(r))));
        }
        // The client below sends nothing before its future is polled (hyper's requests are
        // lazy): asked once more then, as late as this layer can.
        let sent = self.inner.call(req);
        Box::pin(async move {
            if let Some(fence) = gated {
                fence.admit().map_err(refused)?;
            }
            sent.await.map_err(Into::into)
        })
    }
}

/// Reports to the fence every `PATCH` of the Lease answered with `identity` as holder.
#[derive(Clone)]
pub struct LeaseWatchLayer {
    fence: Arc<Fence>,
    path: Arc<str>,
    identity: Arc<str>,
}

impl LeaseWatchLayer {
    pub fn new(fence: Arc<Fence>, namespace: &str, lease: &str, identity: &str) -> Self {
        LeaseWatchLayer {
            fence,
            path: format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{lease}")
                .into(),
            identity: identity.into(),
        }
    }
}

impl<S> Layer<S> for LeaseWatchLayer {
    type Service = LeaseWatch<S>;

    fn layer(&self, inner: S) -> LeaseWatch<S> {
        LeaseWatch {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct LeaseWatch<S> {
    inner: S,
    layer: LeaseWatchLayer,
}

/// Whether a Lease (as JSON) names `identity` as its holder.
pub fn held_by(lease: &[u8], identity: &str) -> bool {
    serde_json::from_slice::<serde_json::Value>(lease)
        .ok()
        .and_then(|l| {
            l.get("spec")?
                .get("holderIdentity")?
                .as_str()
                .map(|h| h == identity)
        })
        .unwrap_or(false)
}

impl<S, B, RB> Service<Request<B>> for LeaseWatch<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<UnsyncBoxBody<Bytes, BoxError>>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let watched = req.method() == Method::PATCH && req.uri().path() == &*self.layer.path;
        let layer = self.layer.clone();
        // Before the request leaves: a confirmation is dated no later than the renewal.
        let sent = Instant::now();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let res = answer.await.map_err(Into::into)?;
            if !watched || !res.status().is_success() {
                return Ok(res.map(|b| b.map_err(Into::into).boxed_unsync()));
            }
            let (parts, body) = res.into_parts();
            let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
            if held_by(&bytes, &layer.identity) {
                layer.fence.confirmed(sent);
            }
            let body = Full::new(bytes)
                .map_err(|never| match never {})
                .boxed_unsync();
            Ok(Response::from_parts(parts, body))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    type Mock = tower_test::mock::Mock<Request<kube::client::Body>, Response<kube::client::Body>>;
    type Handle =
        tower_test::mock::Handle<Request<kube::client::Body>, Response<kube::client::Body>>;

    fn request(method: Method, path: &str) -> Request<kube::client::Body> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(kube::client::Body::empty())
            .expect("request")
    }

    async fn send<S>(svc: &mut S, req: Request<kube::client::Body>) -> Result<S::Response, S::Error>
    where
        S: Service<Request<kube::client::Body>>,
    {
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
        svc.call(req).await
    }

    fn leader_fence() -> Arc<Fence> {
        Arc::new(Fence::new(
            Some(Duration::from_secs(4)),
            Some(Duration::from_secs(13)),
        ))
    }

    async fn answer(handle: &mut Handle, body: &str) {
        let (_, send) = handle.next_request().await.expect("a request got through");
        send.send_response(
            Response::builder()
                .body(kube::client::Body::from(body.as_bytes().to_vec()))
                .expect("response"),
        );
    }

    #[test]
    fn reviews_store_nothing_and_pass_before_the_lease_is_confirmed() {
        assert!(is_review("/apis/authentication.k8s.io/v1/tokenreviews"));
        assert!(is_review(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        ));
        assert!(!is_review("/api/v1/namespaces/app"));
    }

    #[tokio::test]
    async fn no_write_leaves_before_the_lease_is_confirmed_reads_always_do() {
        let fence = leader_fence();
        let (mock, mut handle): (Mock, Handle) = tower_test::mock::pair();
        let mut gate = WriteGateLayer::new(fence.clone()).layer(mock);
        for method in [Method::PATCH, Method::POST, Method::PUT, Method::DELETE] {
            let refused = send(&mut gate, request(method.clone(), "/api/v1/namespaces/app"))
                .await
                .expect_err("refused");
            let refused = refused
                .downcast_ref::<Refused>()
                .expect("the gate's refusal");
            assert_eq!(refused.0, Refusal::Unconfirmed { age_ms: None }, "{method}");
        }
        // Nothing reached the server: the next request it sees is the read.
        let read = send(&mut gate, request(Method::GET, "/api/v1/namespaces/app"));
        let answered = async {
            let (req, respond) = handle.next_request().await.expect("the read");
            assert_eq!(req.method(), Method::GET);
            respond.send_response(Response::new(kube::client::Body::empty()));
        };
        let (read, ()) = tokio::join!(read, answered);
        read.expect("reads are never gated");
        // Confirmed: the write goes out.
        fence.confirmed(Instant::now());
        let write = send(&mut gate, request(Method::PATCH, "/api/v1/namespaces/app"));
        let (write, ()) = tokio::join!(write, answer(&mut handle, "{}"));
        write.expect("a confirmed leader writes");
    }

    /// A client that counts the requests it was asked to send, and sends (answers) them only
    /// when polled, as hyper's does.
    #[derive(Clone, Default)]
    struct Lazy {
        sent: Arc<AtomicUsize>,
    }

    impl Service<Request<kube::client::Body>> for Lazy {
        type Response = Response<kube::client::Body>;
        type Error = BoxError;
        type Future = BoxFuture<Result<Self::Response, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<kube::client::Body>) -> Self::Future {
            let sent = self.sent.clone();
            Box::pin(async move {
                sent.fetch_add(1, Ordering::SeqCst);
                Ok(Response::new(kube::client::Body::empty()))
            })
        }
    }

    #[tokio::test]
    async fn a_write_made_before_a_pause_is_checked_again_when_it_runs() {
        // The fence counts when the request would leave, not when it was made: a request made
        // by a confirmed leader, then held up past its lease (the paused leader), never leaves.
        let fence = Arc::new(Fence::new(None, Some(Duration::from_millis(50))));
        fence.confirmed(Instant::now());
        let lazy = Lazy::default();
        let mut gate = WriteGateLayer::new(fence.clone()).layer(lazy.clone());
        std::future::poll_fn(|cx| gate.poll_ready(cx))
            .await
            .expect("ready");
        let pending = gate.call(request(Method::PATCH, "/api/v1/namespaces/app"));
        tokio::time::sleep(Duration::from_millis(80)).await;
        let refused = pending.await.expect_err("refused");
        assert!(matches!(
            refused.downcast_ref::<Refused>(),
            Some(Refused(Refusal::Unconfirmed { age_ms: Some(_) }))
        ));
        assert_eq!(lazy.sent.load(Ordering::SeqCst), 0, "nothing was sent");
        // Confirmed again: it goes out.
        fence.confirmed(Instant::now());
        send(&mut gate, request(Method::PATCH, "/api/v1/namespaces/app"))
            .await
            .expect("sent");
        assert_eq!(lazy.sent.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_renewal_answered_with_us_as_holder_confirms_the_lease_nothing_else_does() {
        let fence = leader_fence();
        let (mock, mut handle): (Mock, Handle) = tower_test::mock::pair();
        let mut watch =
            LeaseWatchLayer::new(fence.clone(), "pss-system", "lease", "me").layer(mock);
        let lease = "/apis/coordination.k8s.io/v1/namespaces/pss-system/leases/lease";
        let cases = [
            (Method::GET, lease, r#"{"spec":{"holderIdentity":"me"}}"#),
            (
                Method::PATCH,
                lease,
                r#"{"spec":{"holderIdentity":"other"}}"#,
            ),
            (Method::PATCH, lease, r#"{"spec":{}}"#),
            (
                Method::PATCH,
                "/apis/coordination.k8s.io/v1/namespaces/pss-system/leases/another",
                r#"{"spec":{"holderIdentity":"me"}}"#,
            ),
        ];
        for (method, path, body) in cases {
            let call = send(&mut watch, request(method, path));
            let (res, ()) = tokio::join!(call, answer(&mut handle, body));
            // The body is passed on intact.
            let bytes = res
                .expect("answered")
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            assert_eq!(bytes, body.as_bytes());
            assert!(fence.check().is_err(), "{path} {body} confirmed nothing");
        }
        let call = send(&mut watch, request(Method::PATCH, lease));
        let (res, ()) = tokio::join!(
            call,
            answer(
                &mut handle,
                r#"{"spec":{"holderIdentity":"me","renewTime":"x"}}"#
            )
        );
        res.expect("answered");
        assert!(fence.check().is_ok(), "confirmed");
    }

    #[test]
    fn the_holder_is_read_from_the_lease() {
        assert!(held_by(br#"{"spec":{"holderIdentity":"me"}}"#, "me"));
        assert!(!held_by(br#"{"spec":{"holderIdentity":null}}"#, "me"));
        assert!(!held_by(b"not json", "me"));
    }
}
