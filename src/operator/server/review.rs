//! Who may read `/metrics`: the API calls (TokenReview, SubjectAccessReview) and the gate that
//! caches their decisions ([`access`] has the pure rules).

use std::future::Future;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::access::{self, Credential, Decision, DecisionCache};

/// At most this many reviews in flight at once: a flood of made-up tokens (each one a cache miss)
/// reaches the API server this many calls at a time, however many connections carry it.
pub const MAX_REVIEWS_IN_FLIGHT: usize = 4;

/// Reviews a bearer token: 401, 403 or 200. `Err` when the API server could not answer (not
/// cached: the next scrape asks again).
pub trait Reviewer: Send + Sync + 'static {
    fn review(&self, token: &str) -> impl Future<Output = Result<Decision, kube::Error>> + Send;
}

/// The real reviewer: TokenReview, then SubjectAccessReview for the user it names.
pub struct KubeReviewer {
    client: Client,
}

impl KubeReviewer {
    pub fn new(client: Client) -> Self {
        KubeReviewer { client }
    }
}

impl Reviewer for KubeReviewer {
    async fn review(&self, token: &str) -> Result<Decision, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                // The API server's own audiences: what ServiceAccount tokens are issued for.
                audiences: None,
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let Some(user) = access::authenticated_user(answer.status.as_ref()) else {
            let error = answer.status.and_then(|s| s.error).unwrap_or_default();
            tracing::info!(%error, "/metrics: token not authenticated (401)");
            return Ok(Decision::Unauthenticated);
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(
                &PostParams::default(),
                &access::metrics_access_review(&user),
            )
            .await?;
        if access::access_allowed(answer.status.as_ref()) {
            tracing::debug!(user = %user.name, "/metrics: allowed");
            Ok(Decision::Allowed)
        } else {
            let reason = answer.status.and_then(|s| s.reason).unwrap_or_default();
            tracing::info!(
                user = %user.name,
                %reason,
                "/metrics: user may not get /metrics (403); bind it to the ClusterRole pss-operator-metrics-reader"
            );
            Ok(Decision::Forbidden)
        }
    }
}

/// The decision for each request: from the cache, else from a review (then cached).
pub struct Gate<R> {
    reviewer: R,
    cache: Mutex<DecisionCache>,
    in_flight: Semaphore,
}

impl<R: Reviewer> Gate<R> {
    pub fn new(reviewer: R) -> Arc<Self> {
        Arc::new(Gate {
            reviewer,
            cache: Mutex::new(DecisionCache::default()),
            in_flight: Semaphore::new(MAX_REVIEWS_IN_FLIGHT),
        })
    }

    fn cached(&self, key: &access::TokenKey) -> Option<Decision> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(key, Instant::now())
    }

    /// The decision for a request with this `Authorization` header value.
    pub async fn decide(&self, authorization: Option<&[u8]>) -> Result<Decision, kube::Error> {
        let token = match access::credential(authorization) {
            Credential::Missing | Credential::Malformed => return Ok(Decision::Unauthenticated),
            Credential::Bearer(token) => token,
        };
        let key = access::token_key(token);
        if let Some(decision) = self.cached(&key) {
            return Ok(decision);
        }
        // The semaphore is never closed.
        let _permit = self.in_flight.acquire().await;
        // Another request with this token may have been reviewed while this one waited.
        if let Some(decision) = self.cached(&key) {
            return Ok(decision);
        }
        let decision = self.reviewer.review(token).await?;
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, decision, Instant::now());
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use crate::operator::server::access::{ALLOWED_TTL, DENIED_TTL};

    /// Answers from a fixed table, counting calls; a token "down" is an API server error.
    struct Fake {
        calls: AtomicUsize,
    }

    impl Reviewer for Fake {
        async fn review(&self, token: &str) -> Result<Decision, kube::Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            match token {
                "reader" => Ok(Decision::Allowed),
                "stranger" => Ok(Decision::Forbidden),
                "down" => Err(kube::Error::Api(Box::new(
                    kube::core::Status::failure("etcd is down", "InternalError").with_code(500),
                ))),
                _ => Ok(Decision::Unauthenticated),
            }
        }
    }

    fn gate() -> Arc<Gate<Fake>> {
        Gate::new(Fake {
            calls: AtomicUsize::new(0),
        })
    }

    fn calls(g: &Gate<Fake>) -> usize {
        g.reviewer.calls.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn frequent_scrapes_cost_one_review_per_ttl() {
        let g = gate();
        for _ in 0..100 {
            assert_eq!(
                g.decide(Some(b"Bearer reader")).await.expect("decided"),
                Decision::Allowed
            );
            tokio::time::advance(Duration::from_millis(500)).await;
        }
        // 100 scrapes over 50 s, all within the first review's 60 s.
        assert_eq!(calls(&g), 1);
        tokio::time::advance(ALLOWED_TTL).await;
        g.decide(Some(b"Bearer reader")).await.expect("decided");
        assert_eq!(calls(&g), 2, "asked again once expired");
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_cached_briefly() {
        let g = gate();
        for _ in 0..10 {
            assert_eq!(
                g.decide(Some(b"Bearer stranger")).await.expect("decided"),
                Decision::Forbidden
            );
            assert_eq!(
                g.decide(Some(b"Bearer forged")).await.expect("decided"),
                Decision::Unauthenticated
            );
        }
        assert_eq!(calls(&g), 2);
        tokio::time::advance(DENIED_TTL).await;
        g.decide(Some(b"Bearer stranger")).await.expect("decided");
        assert_eq!(calls(&g), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn no_or_malformed_credentials_are_refused_without_a_review() {
        let g = gate();
        for header in [None, Some(&b"Basic dXNlcg=="[..]), Some(b"Bearer ")] {
            assert_eq!(
                g.decide(header).await.expect("decided"),
                Decision::Unauthenticated
            );
        }
        assert_eq!(calls(&g), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn api_errors_are_not_cached() {
        let g = gate();
        assert!(g.decide(Some(b"Bearer down")).await.is_err());
        assert!(g.decide(Some(b"Bearer down")).await.is_err());
        assert_eq!(calls(&g), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_scrapes_with_one_token_share_reviews() {
        let g = gate();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let g = g.clone();
                tokio::spawn(async move { g.decide(Some(b"Bearer reader")).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.expect("task").expect("decided"), Decision::Allowed);
        }
        // At most one review per permit: the others found the decision once they got theirs.
        assert!(
            calls(&g) <= MAX_REVIEWS_IN_FLIGHT,
            "{} reviews for 20 concurrent scrapes",
            calls(&g)
        );
    }
}
