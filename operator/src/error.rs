//! Typed errors of the reconciler. Each has a stable label for metrics.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed while {action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },

    /// The API server refused an object as it is (invalid, forbidden, over a quota):
    /// sending it again cannot help, so the status says so.
    #[error("the API server refused {object}: {message}")]
    Refused { object: String, message: String },

    #[error("GeoDatabase has no namespace or uid yet")]
    MissingObjectKey,

    #[error("Secret {name} exists but has no usable {key}")]
    MalformedSecret { name: String, key: &'static str },

    #[error("PostgreSQL on {instance} failed while {action}: {source}")]
    Postgres {
        instance: String,
        action: &'static str,
        #[source]
        source: crate::postgres::PgError,
    },

    #[error("the GeoDatabase changed while it was being reconciled")]
    StaleView,

    #[error("reconcile did not finish within {0:?}")]
    Timeout(std::time::Duration),

    #[error(transparent)]
    Certificate(crate::certs::CertError),

    #[error("could not serialize {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { action, source }
    }

    /// Like [`Error::kube`] for a write of `object` (`Kind/name`): an answer that will not
    /// change by sending the same request again is a [`Error::Refused`].
    pub fn writing(object: String, action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| match source {
            kube::Error::Api(status) if matches!(status.code, 400 | 403 | 422) => Error::Refused {
                object,
                message: status.message,
            },
            source => Error::Kube { action, source },
        }
    }

    /// Stable label for the `geodb_reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::Refused { .. } => "refused",
            Error::MissingObjectKey => "missing_object_key",
            Error::MalformedSecret { .. } => "malformed_secret",
            Error::Serialize { .. } => "serialize",
            Error::Certificate(_) => "certificate",
            Error::Timeout(_) => "timeout",
            Error::Postgres { .. } => "postgres",
            Error::StaleView => "stale_view",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
