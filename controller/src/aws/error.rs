//! How a failed AWS call is named: the service, the call and a cause a person can act
//! on (no credentials, credentials rejected, access denied, throttled after retries,
//! endpoint unreachable, timed out, not found), never a Debug dump of the SDK's error.

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

/// A failed AWS call.
#[derive(Debug, thiserror::Error)]
#[error("{service} {call}: {cause}")]
pub struct AwsError {
    /// e.g. "EC2", "CloudWatch Logs".
    pub service: &'static str,
    /// The API operation, e.g. "DescribeInstances".
    pub call: &'static str,
    pub cause: AwsCause,
}

/// Why an AWS call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwsCause {
    #[error("no AWS credentials found ({0}); set AWS_PROFILE or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or [aws] profile")]
    NoCredentials(String),
    #[error("the credentials were rejected ({code}: {message}); check the access key, or refresh the session token")]
    BadCredentials { code: String, message: String },
    #[error("access denied ({code}: {message}); the caller's IAM policy must allow this call")]
    AccessDenied { code: String, message: String },
    #[error("throttled and still throttled after retrying with backoff ({code}: {message})")]
    Throttled { code: String, message: String },
    #[error("endpoint unreachable ({0}); check [aws] endpoint_url / AWS_ENDPOINT_URL, the region and the network")]
    Unreachable(String),
    #[error("no answer in time ({0})")]
    TimedOut(String),
    /// The runbook's own deadline ran out while this call was in flight: it fails its
    /// check, not the whole run.
    #[error("no answer before the run's deadline of {}", humantime::format_duration(*.0))]
    DeadlineExceeded(std::time::Duration),
    #[error("not found ({code}: {message})")]
    NotFound { code: String, message: String },
    #[error("{code}: {message}")]
    Service { code: String, message: String },
    #[error("{0}")]
    Other(String),
}

impl AwsError {
    /// True when nothing could be asked of AWS at all (the runbook could not run),
    /// as opposed to one call being refused or failing.
    pub fn is_environmental(&self) -> bool {
        matches!(
            self.cause,
            AwsCause::NoCredentials(_) | AwsCause::BadCredentials { .. } | AwsCause::Unreachable(_) | AwsCause::TimedOut(_)
        )
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self.cause, AwsCause::NotFound { .. })
    }

    /// The service's error code, where it sent one.
    pub fn code(&self) -> Option<&str> {
        match &self.cause {
            AwsCause::BadCredentials { code, .. }
            | AwsCause::AccessDenied { code, .. }
            | AwsCause::Throttled { code, .. }
            | AwsCause::NotFound { code, .. }
            | AwsCause::Service { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Names the cause of an SDK error of any service.
pub fn classify<E, R>(service: &'static str, call: &'static str, err: SdkError<E, R>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let text = source_chain(&err);
    let cause = match &err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            cause_from_code(e.code().unwrap_or("Unknown"), e.message().unwrap_or(""))
        }
        SdkError::TimeoutError(_) => AwsCause::TimedOut(text),
        SdkError::DispatchFailure(df) => {
            if looks_like_missing_credentials(&text) {
                AwsCause::NoCredentials(text)
            } else if df.is_timeout() {
                AwsCause::TimedOut(text)
            } else if df.is_io() {
                AwsCause::Unreachable(text)
            } else {
                AwsCause::Other(text)
            }
        }
        _ if looks_like_missing_credentials(&text) => AwsCause::NoCredentials(text),
        _ => AwsCause::Other(text),
    };
    AwsError { service, call, cause }
}

fn looks_like_missing_credentials(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    ["no credentials", "credentials provider", "credential provider", "provided credentials", "failed to load credentials"]
        .iter()
        .any(|p| t.contains(p))
}

/// The error's message and its causes' messages, "a: b: c", each said once (the SDK's
/// layers often repeat their cause). Display only, never Debug.
pub fn source_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        let msg = e.to_string();
        if !msg.is_empty() && !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// Maps a service error code to its cause. Pure: unit-tested below.
pub fn cause_from_code(code: &str, message: &str) -> AwsCause {
    let (c, m) = (code.to_string(), message.to_string());
    let lower = code.to_ascii_lowercase();
    if matches!(
        code,
        "InvalidClientTokenId" | "UnrecognizedClientException" | "AuthFailure" | "ExpiredToken" | "ExpiredTokenException"
            | "SignatureDoesNotMatch" | "InvalidSignatureException" | "IncompleteSignature" | "MissingAuthenticationToken"
    ) {
        AwsCause::BadCredentials { code: c, message: m }
    } else if lower.starts_with("accessdenied") || lower.ends_with("unauthorizedoperation") || code == "UnauthorizedAccess" {
        AwsCause::AccessDenied { code: c, message: m }
    } else if lower.contains("throttl") || matches!(code, "RequestLimitExceeded" | "TooManyRequestsException" | "SlowDown" | "RequestThrottledException") {
        AwsCause::Throttled { code: c, message: m }
    } else if lower.contains("notfound") || lower.starts_with("nosuch") || lower.ends_with(".notfound") {
        AwsCause::NotFound { code: c, message: m }
    } else {
        AwsCause::Service { code: c, message: m }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn service_codes_map_to_causes_a_person_can_act_on() {
        assert!(matches!(cause_from_code("AccessDeniedException", "no"), AwsCause::AccessDenied { .. }));
        assert!(matches!(cause_from_code("UnauthorizedOperation", "no"), AwsCause::AccessDenied { .. }));
        assert!(matches!(cause_from_code("Throttling", "slow"), AwsCause::Throttled { .. }));
        assert!(matches!(cause_from_code("RequestLimitExceeded", "slow"), AwsCause::Throttled { .. }));
        assert!(matches!(cause_from_code("InvalidClientTokenId", "bad"), AwsCause::BadCredentials { .. }));
        assert!(matches!(cause_from_code("DBInstanceNotFound", "x"), AwsCause::NotFound { .. }));
        assert!(matches!(cause_from_code("ResourceNotFoundException", "x"), AwsCause::NotFound { .. }));
        assert!(matches!(cause_from_code("InvalidInstanceID.NotFound", "x"), AwsCause::NotFound { .. }));
        assert!(matches!(cause_from_code("ValidationError", "x"), AwsCause::Service { .. }));
    }

    #[test]
    fn the_cause_chain_is_said_once_each_without_debug_dumps() {
        #[derive(Debug, thiserror::Error)]
        #[error("dispatch failure")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("no providers in chain provided credentials")]
        struct Inner;
        let text = source_chain(&Outer(Inner));
        assert_eq!(text, "dispatch failure: no providers in chain provided credentials");
        assert!(looks_like_missing_credentials(&text));
    }

    #[test]
    fn an_error_names_service_call_and_cause() {
        let e = AwsError { service: "EC2", call: "DescribeInstances", cause: cause_from_code("UnauthorizedOperation", "not allowed") };
        let s = e.to_string();
        assert!(s.starts_with("EC2 DescribeInstances: access denied"), "{s}");
        assert!(s.contains("not allowed"), "{s}");
        assert!(!e.is_environmental());
        let e = AwsError { service: "RDS", call: "DescribeDBInstances", cause: AwsCause::Unreachable("connection refused".into()) };
        assert!(e.is_environmental());
    }
}
