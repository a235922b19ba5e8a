//! Normal events that Pingora logs as errors, counted instead of logged.
//!
//! | Pingora's line | what it is | counted in |
//! |---|---|---|
//! | `failed to acquire reusable stream` (`pingora_core::connectors`) | an idle pooled upstream connection was still held by its idle watcher; a new one is opened | `gateway_upstream_reuse_missed_total` |
//! | `Fail to serve cache: Downstream ...` (`pingora_proxy::proxy_cache`) | the client went away while a cache hit was being sent | `gateway_client_gone_total{phase="cache_hit"}` |
//!
//! Every other event passes through unchanged.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Metadata};
use tracing_subscriber::layer::{Context, Filter};

use crate::metrics;

/// A per-layer filter for the log output that drops (and counts) the events above.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietFilter;

/// What a quiet event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    /// An idle upstream connection could not be reused.
    ReuseMissed,
    /// The client left during a cache hit.
    ClientGoneOnHit,
}

/// Which quiet event `target` + `message` is, if any.
pub fn classify(target: &str, message: &str) -> Option<Quiet> {
    if target.starts_with("pingora_core::connectors")
        && message == "failed to acquire reusable stream"
    {
        return Some(Quiet::ReuseMissed);
    }
    let downstream_gone = message.contains("Downstream")
        && [
            "WriteError",
            "ConnectionClosed",
            "ReadError",
            "Broken pipe",
            "reset",
        ]
        .iter()
        .any(|k| message.contains(k));
    if target.starts_with("pingora_proxy")
        && message.starts_with("Fail to serve cache")
        && downstream_gone
    {
        return Some(Quiet::ClientGoneOnHit);
    }
    None
}

struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            use fmt::Write;
            let _ = write!(self.0, "{value:?}");
        }
    }
}

impl<S> Filter<S> for QuietFilter {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() != tracing::Level::ERROR {
            return true;
        }
        // Bridged `log` records carry their target in a field; tracing's own in metadata.
        let mut message = Message(String::new());
        event.record(&mut message);
        let target = log_target(event).unwrap_or_else(|| meta.target().to_owned());
        match classify(&target, &message.0) {
            Some(Quiet::ReuseMissed) => {
                metrics::upstream_reuse_missed();
                false
            }
            Some(Quiet::ClientGoneOnHit) => {
                metrics::client_gone("cache_hit");
                false
            }
            None => true,
        }
    }
}

/// The `log.target` field of an event bridged from the `log` crate.
fn log_target(event: &Event<'_>) -> Option<String> {
    struct Target(Option<String>);
    impl Visit for Target {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "log.target" {
                self.0 = Some(value.to_owned());
            }
        }
        fn record_debug(&mut self, _field: &Field, _value: &dyn fmt::Debug) {}
    }
    let mut t = Target(None);
    event.record(&mut t);
    t.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_known_normal_events_are_quiet() {
        assert_eq!(
            classify(
                "pingora_core::connectors",
                "failed to acquire reusable stream"
            ),
            Some(Quiet::ReuseMissed)
        );
        assert_eq!(
            classify(
                "pingora_proxy::proxy_cache",
                "Fail to serve cache:  Downstream WriteError context: Broken pipe, GET /x"
            ),
            Some(Quiet::ClientGoneOnHit)
        );
        assert_eq!(
            classify(
                "pingora_proxy::proxy_cache",
                "Fail to serve cache: Internal InternalError"
            ),
            None,
            "a real cache failure is still an error"
        );
        assert_eq!(classify("pingora_core::connectors", "something else"), None);
    }
}
