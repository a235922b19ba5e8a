//! The performance gateway: a Pingora-based front proxy.
pub mod config;
