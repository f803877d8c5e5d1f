//! The one error type of the operator.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[source] kube::Error),

    #[error(
        "the PodSecurityProfile CRD is not installed: run `make install` (or `kubectl apply -f crds/`)"
    )]
    CrdNotInstalled(#[source] kube::Error),

    #[error("leader election failed: {0}")]
    Lease(#[source] kube_lease_manager::LeaseManagerError),

    #[error("lost the leader lease; exiting so that exactly one replica writes")]
    LeadershipLost,

    /// A write refused by the fence: the leader Lease was not confirmed recently enough (see
    /// [`crate::operator::fence`]); writes resume once a renewal names us as holder again.
    #[error("the leader lease is not confirmed ({}): no write until a renewal names this replica as holder", match .age { Some(a) => format!("last confirmed {:.1}s ago", a.as_secs_f64()), None => "never confirmed".to_owned() })]
    LeaseUnconfirmed { age: Option<std::time::Duration> },

    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("metrics: {0}")]
    Metrics(#[source] prometheus::Error),

    #[error("{kind} {namespace}/{name} skipped: cannot read it: {reason}")]
    Unreadable {
        kind: &'static str,
        namespace: String,
        name: String,
        reason: String,
    },

    /// A configuration the operator refuses to start with (the text names the input and field).
    #[error("{0}")]
    Config(String),

    #[error("metrics TLS: {0}")]
    Tls(String),

    #[error("invalid flags: {0}")]
    Flags(String),

    #[error("serving {addr}: {source}")]
    Serve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A short, bounded label for `pss_reconcile_errors_total{error}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(status)) if status.code == 403 => "forbidden",
            Error::Kube(kube::Error::Api(status)) if status.code == 404 => "not_found",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "client",
            Error::CrdNotInstalled(_) => "crd_not_installed",
            Error::Unreadable { .. } => "unreadable",
            Error::Lease(_) => "lease",
            Error::LeadershipLost => "leadership_lost",
            Error::LeaseUnconfirmed { .. } => "lease_unconfirmed",
            Error::Serialize { .. } => "serialize",
            Error::Metrics(_) => "metrics",
            Error::Serve { .. } => "serve",
            Error::Config(_) => "config",
            Error::Tls(_) => "tls",
            Error::Flags(_) => "flags",
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        // The client's write gate refused the request (see `crate::operator::gate`).
        if let kube::Error::Service(inner) = &e
            && let Some(refused) = inner.downcast_ref::<crate::operator::gate::Refused>()
        {
            return refused.0.into_error();
        }
        Error::Kube(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> Error {
        let status = kube::core::Status::failure("boom", "Reason").with_code(code);
        Error::Kube(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn metric_labels_are_bounded_and_specific() {
        assert_eq!(api_error(409).metric_label(), "conflict");
        assert_eq!(api_error(403).metric_label(), "forbidden");
        assert_eq!(api_error(500).metric_label(), "api");
        assert_eq!(Error::LeadershipLost.metric_label(), "leadership_lost");
        assert_eq!(
            Error::LeaseUnconfirmed { age: None }.metric_label(),
            "lease_unconfirmed"
        );
    }

    #[test]
    fn a_write_refused_by_the_gate_is_the_fence_s_error_not_a_client_error() {
        use crate::operator::fence::Refusal;
        use crate::operator::gate::Refused;
        let refused = kube::Error::Service(Box::new(Refused(Refusal::Unconfirmed {
            age_ms: Some(14_200),
        })));
        let e = Error::from(refused);
        assert_eq!(e.metric_label(), "lease_unconfirmed");
        assert!(e.to_string().contains("last confirmed 14.2s ago"), "{e}");
        let standstill = kube::Error::Service(Box::new(Refused(Refusal::Standstill { ms: 0 })));
        assert!(matches!(Error::from(standstill), Error::LeadershipLost));
    }

    #[test]
    fn a_missing_crd_says_what_to_do() {
        let inner = kube::Error::Api(Box::new(
            kube::core::Status::failure("not found", "NotFound").with_code(404),
        ));
        assert!(
            Error::CrdNotInstalled(inner)
                .to_string()
                .contains("make install")
        );
    }
}
