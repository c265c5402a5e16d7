//! What the AWS stores share: the SDK configuration and the mapping of AWS errors.

use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use vss_protocol::config::Timeouts;

use crate::{ErrorKind, StoreError};

/// The SDK configuration of a region, from the default credential chain of this process. A
/// call (with the SDK's own retries) takes at most the request timeout.
pub(crate) async fn base_config(
    region: &str,
    endpoint: Option<&str>,
    timeouts: &Timeouts,
) -> aws_config::SdkConfig {
    let sdk_timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(timeouts.connect())
        .operation_attempt_timeout(timeouts.request())
        .operation_timeout(timeouts.request())
        .build();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_string()))
        .timeout_config(sdk_timeouts);
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// Maps an SDK error by its AWS error code and HTTP status; the message is AWS's, which names
/// no secret values.
pub(crate) fn store_error<E>(
    store: &str,
    operation: &str,
    secret: Option<&str>,
    e: SdkError<E>,
    timeouts: &Timeouts,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let SdkError::TimeoutError(_) = &e {
        let message = format!(
            "{operation}: {}",
            crate::retry::timed_out(timeouts.connect(), timeouts.request())
        );
        return StoreError::new(ErrorKind::Unavailable, store, secret, message);
    }
    let status = e.raw_response().map(|r| r.status().as_u16());
    let (code, message) = match e.as_service_error() {
        Some(service) => (
            service.code().unwrap_or("Unknown").to_string(),
            service.message().unwrap_or("").to_string(),
        ),
        None => ("Unavailable".to_string(), DisplayErrorContext(&e).to_string()),
    };
    let kind = match (code.as_str(), status) {
        ("PreconditionFailed" | "ConditionalRequestConflict" | "ResourceExistsException", _)
        | (_, Some(409 | 412)) => ErrorKind::Conflict,
        ("ResourceNotFoundException" | "NoSuchKey" | "NotFound", _) | (_, Some(404)) => {
            ErrorKind::NotFound
        }
        ("ThrottlingException" | "TooManyRequestsException" | "SlowDown", _) | (_, Some(429)) => {
            ErrorKind::Throttled
        }
        ("AccessDeniedException" | "UnrecognizedClientException" | "AccessDenied", _)
        | (_, Some(403)) => ErrorKind::Unauthorized,
        ("InternalServiceError" | "ServiceUnavailable" | "Unavailable", _)
        | (_, Some(500..=599)) => ErrorKind::Unavailable,
        _ => ErrorKind::Invalid,
    };
    let status = status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
    StoreError::new(kind, store, secret, format!("{operation}: {code}{status}: {message}"))
}
