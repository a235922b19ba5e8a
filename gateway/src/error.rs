//! Errors the gateway answers itself, and their one JSON shape.
//!
//! Every response the gateway makes (no route, upstream down, timeouts, later
//! limits) is `{"error": "...", "request_id": "..."}` with a specific status.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType};

/// A response the gateway makes instead of the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No route matches the request.
    #[error("no route for this request")]
    NoRoute,
    /// The path has dot or empty segments.
    #[error("non-canonical request path (dot or empty segments)")]
    BadPath,
    /// An HTTP/1.1 request without `Host`, or with more than one.
    #[error("missing or repeated Host header (RFC 9112 section 3.2)")]
    BadHost,
    /// The request could not be read or is malformed.
    #[error("bad request")]
    BadRequest,
    /// A `Transfer-Encoding` other than exactly `chunked` (RFC 9112 §6.1).
    #[error("unsupported transfer coding (only chunked is accepted)")]
    UnsupportedTransferCoding,
    /// The client address is not in the route's `allow_from`.
    #[error("forbidden: this route does not accept requests from your address")]
    Forbidden,
    /// More header fields than `client.max_headers`.
    #[error("too many request header fields")]
    TooManyHeaders,
    /// A header block larger than `client.max_header_bytes`.
    #[error("request header too large")]
    HeaderTooLarge,
    /// A body larger than `client.max_body_size`.
    #[error("request body too large")]
    BodyTooLarge,
    /// No server of the upstream could be selected.
    #[error("no upstream server available")]
    NoServer,
    /// Connecting to or talking to the upstream failed.
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    /// The upstream sent something that is not valid HTTP.
    #[error("invalid response from upstream")]
    BadUpstreamResponse,
    /// The upstream did not accept the connection in time.
    #[error("upstream connect timed out")]
    ConnectTimeout,
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// Every server of the upstream has an open circuit breaker.
    #[error("upstream unavailable (circuit open), retry later")]
    CircuitOpen,
    /// Over the route's per-client rate.
    #[error("rate limit exceeded, retry later")]
    RateLimited,
    /// The route's or upstream's queue is full.
    #[error("overloaded: queue full, retry later")]
    QueueFull,
    /// No slot within the queue timeout.
    #[error("overloaded: no capacity within the queue timeout, retry later")]
    QueueTimeout,
    /// `PURGE` from an address outside `cache.purge_allow`.
    #[error("PURGE is not allowed from this address")]
    PurgeNotAllowed,
    /// `Cache-Control: only-if-cached` and nothing suitable is stored.
    #[error("not in cache (only-if-cached)")]
    NotCached,
    /// A bug or an unexpected state in the gateway.
    #[error("internal error")]
    Internal,
}

impl GatewayError {
    /// The HTTP status this error is answered with.
    pub fn status(self) -> u16 {
        match self {
            Self::NoRoute => 404,
            Self::BadPath | Self::BadRequest | Self::BadHost => 400,
            Self::Forbidden => 403,
            Self::RateLimited => 429,
            Self::PurgeNotAllowed => 405,
            Self::UnsupportedTransferCoding => 501,
            Self::BodyTooLarge => 413,
            Self::TooManyHeaders | Self::HeaderTooLarge => 431,
            Self::NoServer | Self::UpstreamUnavailable | Self::BadUpstreamResponse => 502,
            Self::QueueFull | Self::QueueTimeout | Self::CircuitOpen => 503,
            Self::ConnectTimeout | Self::UpstreamTimeout | Self::NotCached => 504,
            Self::Internal => 500,
        }
    }

    /// A short machine-friendly name for logs and metrics.
    pub fn kind(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::BadPath => "bad_path",
            Self::BadRequest => "bad_request",
            Self::BadHost => "bad_host",
            Self::Forbidden => "forbidden",
            Self::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Self::TooManyHeaders => "too_many_headers",
            Self::HeaderTooLarge => "header_too_large",
            Self::BodyTooLarge => "body_too_large",
            Self::NoServer => "no_server",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::BadUpstreamResponse => "bad_upstream_response",
            Self::ConnectTimeout => "connect_timeout",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::NotCached => "not_cached",
            Self::QueueFull => "queue_full",
            Self::CircuitOpen => "circuit_open",
            Self::RateLimited => "rate_limited",
            Self::QueueTimeout => "queue_timeout",
            Self::PurgeNotAllowed => "purge_not_allowed",
            Self::Internal => "internal",
        }
    }

    /// Maps a Pingora error to what the client is told; `None` when the client is gone.
    pub fn from_pingora(e: &Error) -> Option<Self> {
        use ErrorType::*;
        match e.etype() {
            Custom(NO_SERVER) => return Some(Self::NoServer),
            Custom(BREAKER_OPEN) => return Some(Self::CircuitOpen),
            Custom(SHED_QUEUE_FULL) => return Some(Self::QueueFull),
            Custom(SHED_QUEUE_TIMEOUT) => return Some(Self::QueueTimeout),
            _ => {}
        }
        Some(match (e.esource(), e.etype()) {
            (_, HTTPStatus(400)) => Self::BadRequest,
            (_, HTTPStatus(413)) => Self::BodyTooLarge,
            (_, HTTPStatus(_)) => Self::Internal,
            (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => return None,
            (ErrorSource::Downstream, _) => Self::BadRequest,
            (ErrorSource::Upstream, ConnectTimedout) => Self::ConnectTimeout,
            (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => Self::UpstreamTimeout,
            (ErrorSource::Upstream, InvalidHTTPHeader | H1Error | H2Error | InvalidH2) => {
                Self::BadUpstreamResponse
            }
            (ErrorSource::Upstream, _) => Self::UpstreamUnavailable,
            (ErrorSource::Internal | ErrorSource::Unset, _) => Self::Internal,
        })
    }

    /// The JSON body, with the request id escaped.
    pub fn body(self, request_id: &str) -> Bytes {
        json_error(&self.to_string(), request_id)
    }

    /// Status line and headers of the error response (`Retry-After` when shed).
    pub fn header(self, request_id: &str, body_len: usize) -> pingora::Result<ResponseHeader> {
        let mut h = json_header(self.status(), request_id, body_len)?;
        if matches!(
            self,
            Self::QueueFull | Self::QueueTimeout | Self::CircuitOpen
        ) {
            h.insert_header(http::header::RETRY_AFTER, "1")?;
        }
        Ok(h)
    }
}

/// The message of the JSON 400 that replaces Pingora's bare one for a request
/// it could not parse (see [`crate::client`]).
pub const MALFORMED: &str =
    "malformed request (request line, header fields, Host or absolute-form target)";

/// `Custom` error type used when a balancer has no server to offer.
pub const NO_SERVER: &str = "no upstream server available";
/// `Custom` error type when every server of an upstream has an open breaker.
pub const BREAKER_OPEN: &str = "every server's circuit is open";
/// `Custom` error type of a request shed because the queue was full.
pub const SHED_QUEUE_FULL: &str = "shed: queue full";
/// `Custom` error type of a request shed at the queue timeout.
pub const SHED_QUEUE_TIMEOUT: &str = "shed: queue timeout";

/// `{"error": message, "request_id": id}`.
pub fn json_error(message: &str, request_id: &str) -> Bytes {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: &'a str,
        request_id: &'a str,
    }
    let body = Body {
        error: message,
        request_id,
    };
    let mut v = serde_json::to_vec(&body).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// Headers of a JSON response the gateway makes: never cached, always with the request id.
pub fn json_header(
    status: u16,
    request_id: &str,
    body_len: usize,
) -> pingora::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(status, Some(4))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(http::header::CONTENT_LENGTH, body_len)?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    h.insert_header(crate::request_id::HEADER, request_id)?;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_escapes_the_request_id() {
        let b = GatewayError::NoRoute.body(r#"a"b\c"#);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"], "no route for this request");
        assert_eq!(v["request_id"], r#"a"b\c"#);
    }

    #[test]
    fn pingora_errors_map_to_specific_statuses() {
        let up = |t| GatewayError::from_pingora(&Error::new_up(t));
        assert_eq!(
            up(ErrorType::ConnectRefused),
            Some(GatewayError::UpstreamUnavailable)
        );
        assert_eq!(up(ErrorType::ConnectTimedout).unwrap().status(), 504);
        assert_eq!(up(ErrorType::ReadTimedout).unwrap().status(), 504);
        let gone = Error::new_down(ErrorType::ConnectionClosed);
        assert_eq!(GatewayError::from_pingora(&gone), None);
        let none = Error::new(ErrorType::Custom(NO_SERVER));
        assert_eq!(
            GatewayError::from_pingora(&none),
            Some(GatewayError::NoServer)
        );
    }
}
