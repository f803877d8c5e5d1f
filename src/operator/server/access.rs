//! Who may read `/metrics`: the pure part (no I/O).
//!
//! A scrape carries `Authorization: Bearer <token>`. The token is authenticated by a TokenReview
//! and the user it names authorized by a SubjectAccessReview (`get` on the non-resource URL
//! `/metrics`), as kube-apiserver does for its own `/metrics` and as controller-runtime's
//! `WithAuthenticationAndAuthorization` does. This module reads the header, builds the
//! SubjectAccessReview from the TokenReview's answer, reads both answers, and remembers each
//! decision for a short while, keyed by the token's SHA-256 (the token itself is never kept), so a
//! Prometheus scraping every few seconds costs two API calls per [`ALLOWED_TTL`], not per scrape.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use tokio::time::Instant;

/// The only path the secure server serves, and the non-resource URL authorized.
pub const METRICS_PATH: &str = "/metrics";
/// How long an allowed token is trusted without asking again (a removed RoleBinding or a deleted
/// ServiceAccount takes at most this long to shut a reader out).
pub const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a refused token (unknown, expired, or not allowed) is refused without asking again
/// (a new RoleBinding takes at most this long to let a reader in).
pub const DENIED_TTL: Duration = Duration::from_secs(10);
/// At most this many tokens remembered: a flood of made-up tokens cannot grow memory.
pub const CACHE_CAPACITY: usize = 1024;

/// What a request to `/metrics` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// 200: an authenticated user allowed `get` on `/metrics`.
    Allowed,
    /// 401: no bearer token, a malformed header, or a token the API server does not accept.
    Unauthenticated,
    /// 403: a valid token whose user may not `get` `/metrics`.
    Forbidden,
}

impl Decision {
    pub fn status(self) -> u16 {
        match self {
            Decision::Allowed => 200,
            Decision::Unauthenticated => 401,
            Decision::Forbidden => 403,
        }
    }

    pub fn ttl(self) -> Duration {
        match self {
            Decision::Allowed => ALLOWED_TTL,
            Decision::Unauthenticated | Decision::Forbidden => DENIED_TTL,
        }
    }
}

/// The credential of a request, from its `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// No `Authorization` header.
    Missing,
    /// A header that is not `Bearer <token>` (another scheme, no token, not ASCII, spaces).
    Malformed,
    Bearer(&'a str),
}

/// Reads an `Authorization` header value: `Bearer <token>`, the scheme case-insensitive, as
/// kube-apiserver's bearer token authenticator reads it.
pub fn credential(header: Option<&[u8]>) -> Credential<'_> {
    let Some(raw) = header else {
        return Credential::Missing;
    };
    let Ok(text) = std::str::from_utf8(raw) else {
        return Credential::Malformed;
    };
    let Some((scheme, token)) = text.trim().split_once(' ') else {
        return Credential::Malformed;
    };
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer")
        || token.is_empty()
        || token.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Credential::Malformed;
    }
    Credential::Bearer(token)
}

/// The cache key of a token: its SHA-256.
pub type TokenKey = [u8; 32];

pub fn token_key(token: &str) -> TokenKey {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// The user a TokenReview authenticated, if it did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    pub name: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The authenticated user of a TokenReview's status: `None` unless `authenticated` is true and a
/// username is given (an error in the status means not authenticated).
pub fn authenticated_user(status: Option<&TokenReviewStatus>) -> Option<User> {
    let status = status?;
    if status.authenticated != Some(true) {
        return None;
    }
    let info = status.user.as_ref()?;
    let name = info.username.as_deref().filter(|n| !n.is_empty())?;
    Some(User {
        name: name.to_owned(),
        uid: info.uid.clone().filter(|u| !u.is_empty()),
        groups: info.groups.clone().unwrap_or_default(),
        extra: info.extra.clone().unwrap_or_default(),
    })
}

/// The SubjectAccessReview asking whether `user` may `get` the non-resource URL `/metrics`.
pub fn metrics_access_review(user: &User) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            uid: user.uid.clone(),
            groups: (!user.groups.is_empty()).then(|| user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            non_resource_attributes: Some(NonResourceAttributes {
                path: Some(METRICS_PATH.to_owned()),
                verb: Some("get".to_owned()),
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Allowed only when the authorizer says `allowed` and not `denied`.
pub fn access_allowed(status: Option<&SubjectAccessReviewStatus>) -> bool {
    status.is_some_and(|s| s.allowed && s.denied != Some(true))
}

/// Decisions remembered per token hash until they expire; at most `capacity` of them.
#[derive(Debug)]
pub struct DecisionCache {
    entries: HashMap<TokenKey, (Decision, Instant)>,
    capacity: usize,
}

impl Default for DecisionCache {
    fn default() -> Self {
        DecisionCache::new(CACHE_CAPACITY)
    }
}

impl DecisionCache {
    pub fn new(capacity: usize) -> Self {
        DecisionCache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The decision for `key` if it has not expired at `now`.
    pub fn get(&self, key: &TokenKey, now: Instant) -> Option<Decision> {
        self.entries
            .get(key)
            .filter(|(_, expires)| now < *expires)
            .map(|(d, _)| *d)
    }

    /// Remembers `decision` for its TTL from `now`. When full, expired entries go first, then the
    /// one closest to expiring.
    pub fn insert(&mut self, key: TokenKey, decision: Decision, now: Instant) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, expires)| now < *expires);
            if self.entries.len() >= self.capacity
                && let Some(soonest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(k, _)| *k)
            {
                self.entries.remove(&soonest);
            }
        }
        self.entries.insert(key, (decision, now + decision.ttl()));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    #[test]
    fn the_header_must_be_a_bearer_token() {
        assert_eq!(credential(None), Credential::Missing);
        assert_eq!(
            credential(Some(b"Bearer abc.def")),
            Credential::Bearer("abc.def")
        );
        assert_eq!(credential(Some(b"bearer abc")), Credential::Bearer("abc"));
        assert_eq!(credential(Some(b"BEARER  abc ")), Credential::Bearer("abc"));
        for bad in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Bearer    ",
            b"Basic dXNlcjpwYXNz",
            b"abc",
            b"Bearer a b",
            b"Bearer a\tb",
            b"Bearer \xff\xfe",
            b"",
        ] {
            assert_eq!(
                credential(Some(bad)),
                Credential::Malformed,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn tokens_are_keyed_by_their_sha256() {
        // sha256("abc"), FIPS 180-2 test vector.
        let hex: String = token_key("abc")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(token_key("abc"), token_key("abd"));
    }

    fn status(authenticated: Option<bool>, name: Option<&str>) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated,
            user: name.map(|n| UserInfo {
                username: Some(n.to_owned()),
                uid: Some("u-1".into()),
                groups: Some(vec!["system:serviceaccounts".into()]),
                extra: Some(BTreeMap::from([(
                    "authentication.kubernetes.io/pod-name".into(),
                    vec!["prometheus-0".into()],
                )])),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_an_authenticated_named_user_counts() {
        assert_eq!(authenticated_user(None), None);
        assert_eq!(
            authenticated_user(Some(&status(Some(false), Some("a")))),
            None
        );
        assert_eq!(authenticated_user(Some(&status(None, Some("a")))), None);
        assert_eq!(authenticated_user(Some(&status(Some(true), None))), None);
        assert_eq!(
            authenticated_user(Some(&status(Some(true), Some("")))),
            None
        );
        let user = authenticated_user(Some(&status(
            Some(true),
            Some("system:serviceaccount:monitoring:prometheus"),
        )))
        .expect("authenticated");
        assert_eq!(user.name, "system:serviceaccount:monitoring:prometheus");
        assert_eq!(user.uid.as_deref(), Some("u-1"));
        assert_eq!(user.groups, ["system:serviceaccounts"]);
    }

    #[test]
    fn the_access_review_asks_for_get_on_the_metrics_url_as_that_user() {
        let user = authenticated_user(Some(&status(Some(true), Some("alice")))).expect("user");
        let review = metrics_access_review(&user);
        let spec = &review.spec;
        assert_eq!(spec.user.as_deref(), Some("alice"));
        assert_eq!(spec.uid.as_deref(), Some("u-1"));
        assert_eq!(
            spec.groups.as_deref(),
            Some(&["system:serviceaccounts".to_owned()][..])
        );
        assert_eq!(
            spec.extra.as_ref().map(|e| e.len()),
            Some(1),
            "extra is passed on: authorizers may use it"
        );
        let attrs = spec.non_resource_attributes.as_ref().expect("non-resource");
        assert_eq!(attrs.path.as_deref(), Some("/metrics"));
        assert_eq!(attrs.verb.as_deref(), Some("get"));
        assert!(spec.resource_attributes.is_none());
    }

    #[test]
    fn allowed_means_allowed_and_not_denied() {
        let s = |allowed, denied| SubjectAccessReviewStatus {
            allowed,
            denied,
            ..Default::default()
        };
        assert!(access_allowed(Some(&s(true, None))));
        assert!(access_allowed(Some(&s(true, Some(false)))));
        assert!(!access_allowed(Some(&s(true, Some(true)))));
        assert!(!access_allowed(Some(&s(false, None))));
        assert!(!access_allowed(None));
    }

    #[test]
    fn decisions_map_to_status_codes_and_lifetimes() {
        assert_eq!(Decision::Allowed.status(), 200);
        assert_eq!(Decision::Unauthenticated.status(), 401);
        assert_eq!(Decision::Forbidden.status(), 403);
        assert_eq!(Decision::Allowed.ttl(), ALLOWED_TTL);
        assert_eq!(Decision::Forbidden.ttl(), DENIED_TTL);
        assert!(DENIED_TTL < ALLOWED_TTL);
    }

    #[test]
    fn a_decision_is_remembered_for_its_ttl_only() {
        let t0 = Instant::now();
        let mut cache = DecisionCache::default();
        let (a, b) = (token_key("a"), token_key("b"));
        cache.insert(a, Decision::Allowed, t0);
        cache.insert(b, Decision::Forbidden, t0);
        assert_eq!(cache.get(&a, t0), Some(Decision::Allowed));
        assert_eq!(
            cache.get(&a, t0 + ALLOWED_TTL - Duration::from_millis(1)),
            Some(Decision::Allowed)
        );
        assert_eq!(cache.get(&a, t0 + ALLOWED_TTL), None);
        assert_eq!(
            cache.get(&b, t0 + DENIED_TTL - Duration::from_millis(1)),
            Some(Decision::Forbidden)
        );
        assert_eq!(cache.get(&b, t0 + DENIED_TTL), None);
        assert_eq!(cache.get(&token_key("c"), t0), None);
        // A new decision replaces the old one and starts a new lifetime.
        cache.insert(b, Decision::Allowed, t0 + DENIED_TTL);
        assert_eq!(
            cache.get(&b, t0 + DENIED_TTL + Duration::from_secs(30)),
            Some(Decision::Allowed)
        );
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_full_cache_drops_expired_entries_then_the_soonest_to_expire() {
        let t0 = Instant::now();
        let mut cache = DecisionCache::new(3);
        cache.insert(token_key("denied"), Decision::Forbidden, t0);
        cache.insert(token_key("old"), Decision::Allowed, t0);
        cache.insert(
            token_key("new"),
            Decision::Allowed,
            t0 + Duration::from_secs(5),
        );
        // Full; "denied" (expires t0+10s) is the soonest to expire: it goes.
        cache.insert(
            token_key("x"),
            Decision::Allowed,
            t0 + Duration::from_secs(6),
        );
        assert_eq!(cache.len(), 3);
        let at = t0 + Duration::from_secs(6);
        assert_eq!(cache.get(&token_key("denied"), at), None);
        assert!(cache.get(&token_key("old"), at).is_some());
        // Later, once "old" and "new" expired, both go and nothing live is dropped.
        let later = t0 + Duration::from_secs(65);
        cache.insert(token_key("y"), Decision::Allowed, later);
        assert_eq!(cache.len(), 2, "x and y");
        assert!(cache.get(&token_key("x"), later).is_some());
        // A flood of distinct tokens never grows it past its capacity.
        for i in 0..100 {
            cache.insert(
                token_key(&format!("flood-{i}")),
                Decision::Unauthenticated,
                later,
            );
        }
        assert_eq!(cache.len(), 3);
    }
}
