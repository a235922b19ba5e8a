//! The configuration contract: YAML file → figment (file, then `GATEWAY_*` env with
//! `__` nesting) → [`raw`] serde structs → validation (pure; DNS, secret files
//! and memory come through [`resolve::Resolve`]) → [`Config`] ([`types`]).
//!
//! A bad configuration never starts a server: [`ConfigError`] names the file (or
//! the environment variable) and the key path, e.g.
//! `conf/gateway.yaml: routes[2].cache.default_ttl: invalid duration ...`.

pub mod raw;
pub mod resolve;
pub mod types;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Yaml};
use figment::Figment;

pub use raw::{RawConfig, TOP_LEVEL_KEYS};
pub use types::*;

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "GATEWAY_";

/// Whether `key`, a `GATEWAY_` variable's name without the prefix (any case),
/// overrides the configuration: its first segment (before the first `__`)
/// names a top-level key. Such variables are parsed strictly, so that
/// `GATEWAY_ADMIN__TOKN` is refused with its key path; any other `GATEWAY_*`
/// variable (`GATEWAY_PORT` of a wrapper script, say) is not configuration.
pub fn is_config_var(key: &str) -> bool {
    let first = key.split("__").next().unwrap_or_default();
    TOP_LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(first))
}

/// The variables among `names` that start with [`ENV_PREFIX`] (any case, as
/// figment matches it) but are not configuration: [`load`] ignores them and
/// warns about each.
pub fn ignored_env_vars<I, S>(names: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    names
        .into_iter()
        .filter_map(|name| {
            let name = name.as_ref().trim();
            let key = name
                .get(..ENV_PREFIX.len())
                .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
                .map(|_| &name[ENV_PREFIX.len()..])?;
            (!is_config_var(key)).then(|| name.to_owned())
        })
        .collect()
}

/// One semantic problem, at one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Key path, e.g. `routes[1].upstream`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist or cannot be read.
    #[error("{}: cannot read the configuration file: {source}", path.display())]
    Unreadable {
        /// The file named on the command line.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// YAML syntax, unknown key, wrong type, bad duration or size.
    #[error("{}", Lines(.0))]
    Parse(Vec<String>),
    /// Semantic problems found by `validate()`, all of them.
    #[error("{}", Lines(&.1.iter().map(|i| format!("{}: {}: {}", .0, i.key, i.message)).collect::<Vec<_>>()))]
    Invalid(String, Vec<Invalid>),
}

struct Lines<'a>(&'a [String]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(l)?;
        }
        Ok(())
    }
}

/// Loads `path`, applies `GATEWAY_*` environment overrides, and validates.
///
/// Only variables whose first segment names a top-level key are read (see
/// [`is_config_var`]); every other `GATEWAY_*` variable is ignored with a
/// warning naming it, at each load (`-t`, start and SIGHUP reload).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    // figment silently treats a missing file as empty: check first.
    std::fs::metadata(path).map_err(|source| ConfigError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let names = std::env::vars_os().map(|(k, _)| k.to_string_lossy().into_owned());
    for name in ignored_env_vars(names) {
        tracing::warn!(
            "ignoring environment variable {name}: not a configuration key \
             (GATEWAY_<KEY> needs a top-level key: {})",
            TOP_LEVEL_KEYS.join(", ")
        );
    }
    let env = Env::prefixed(ENV_PREFIX)
        .filter(|key| is_config_var(key.as_str()))
        .split("__");
    let figment = Figment::new().merge(Yaml::file_exact(path)).merge(env);
    from_figment(figment, &path.display().to_string())
}

/// Builds a config from YAML text only (no environment): the seam tests use.
pub fn from_yaml_str(yaml: &str) -> Result<Config, ConfigError> {
    from_figment(Figment::from(Yaml::string(yaml)), "<yaml>")
}

fn from_figment(figment: Figment, file: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = figment
        .extract()
        .map_err(|e| ConfigError::Parse(e.into_iter().map(|e| describe(&e, file)).collect()))?;
    validate::validate(raw, &resolve::System)
        .map_err(|problems| ConfigError::Invalid(file.to_owned(), problems))
}

/// `source: key.path[2]: what` for one figment error.
fn describe(e: &figment::Error, file: &str) -> String {
    let key = key_path(&e.path);
    // Name the environment variable when the bad value came from one.
    let source = match &e.metadata {
        Some(md) if md.name.contains("environment") => {
            format!(
                "environment variable {ENV_PREFIX}{}",
                e.path.join("__").to_uppercase()
            )
        }
        _ => file.to_owned(),
    };
    let kind = e.kind.to_string();
    if key.is_empty() {
        format!("{source}: {kind}")
    } else {
        format!("{source}: {key}: {kind}")
    }
}

/// figment paths are `["routes", "2", "cache"]`; the contract writes `routes[2].cache`.
fn key_path(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
upstreams:
  app: { servers: ["127.0.0.1:5000"] }
routes:
  - { name: a, match: { path_prefix: /a }, upstream: app }
  - { name: b, match: { path_prefix: / }, upstream: app }
"#;

    fn err(yaml: &str) -> String {
        from_yaml_str(yaml).unwrap_err().to_string()
    }

    #[test]
    fn parse_errors_name_the_key_path() {
        let cases = [
            (
                format!("{BASE}\nthreads: x"),
                "<yaml>: threads: invalid type",
            ),
            (
                BASE.replace("path_prefix: /a", "path_prefix: /a, bogus: 1"),
                "<yaml>: routes[0].match.bogus: unknown field",
            ),
            (
                BASE.replace("name: a, ", "name: a, cache: { default_ttl: 5 parsecs }, "),
                "<yaml>: routes[0].cache.default_ttl: invalid value",
            ),
            (
                format!("{BASE}\nclient: {{ max_body_size: 10 zb }}"),
                "<yaml>: client.max_body_size: invalid size \"10 zb\"",
            ),
            (
                "routes: [".to_string(),
                "<yaml>: did not find expected node content",
            ),
        ];
        for (yaml, want) in cases {
            let got = err(&yaml);
            assert!(got.starts_with(want), "got {got:?}, want prefix {want:?}");
        }
    }

    #[test]
    fn validation_lists_every_problem_with_its_key() {
        let yaml = BASE
            .replace(
                "upstream: app }\n  - { name: b",
                "upstream: nope }\n  - { name: a",
            )
            .replace("path_prefix: /a", "path_prefix: a, methods: [GETT]");
        let got = err(&format!(
            "{yaml}\nlisten: nowhere\nshutdown: {{ grace_period: 1500ms }}"
        ));
        for want in [
            "<yaml>: listen: \"nowhere\" is not an IP:port address",
            "<yaml>: shutdown.grace_period: must be a whole number of seconds",
            "<yaml>: routes[0].upstream: no upstream named \"nope\"",
            "<yaml>: routes[0].match.path_prefix: must start with '/'",
            "<yaml>: routes[0].match.methods[0]: unknown method \"GETT\"",
            "<yaml>: routes[1].name: duplicate route name \"a\"",
        ] {
            assert!(got.contains(want), "{want:?} missing in:\n{got}");
        }
    }

    #[test]
    fn the_targeted_field_is_a_name_of_its_own_or_empty() {
        let c = from_yaml_str(BASE).unwrap();
        assert_eq!(
            c.cache.targeted_field.as_ref().map(|n| n.as_str()),
            Some("gateway-cache-control")
        );
        assert!(!c.cache.forward_targeted);
        let c = from_yaml_str(&format!("{BASE}\ncache: {{ targeted_field: \"\" }}")).unwrap();
        assert_eq!(c.cache.targeted_field, None);
        for bad in ["CDN-Cache-Control", "cache-control", "Bad Name"] {
            let got = err(&format!("{BASE}\ncache: {{ targeted_field: \"{bad}\" }}"));
            assert!(
                got.contains("<yaml>: cache.targeted_field: "),
                "{bad}: {got}"
            );
        }
    }

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let c = from_yaml_str(BASE).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.client.max_header_bytes, 64 * 1024);
        assert_eq!(c.routes[0].matcher.path_prefix, "/a");
        assert_eq!(c.routes[1].matcher.path_prefix, "/");
        assert!(c.admin.listen.ip().is_loopback());
    }

    #[test]
    fn only_variables_naming_a_top_level_key_are_configuration() {
        for key in [
            "LISTEN",
            "listen",
            "ADMIN__TOKEN",
            "ADMIN__TOKN",
            "ROUTES__0__NAME",
        ] {
            assert!(is_config_var(key), "{key}");
        }
        for key in ["PORT", "ADMIN_TOKEN", "", "__LISTEN", "LISTENER"] {
            assert!(!is_config_var(key), "{key}");
        }
        let env = [
            "PATH",
            "GATEWAY_PORT",
            "GATEWAY_LISTEN",
            "GATEWAY_ADMIN__TOKN",
            "gateway_home",
            "GATEWAY_",
            "MY_GATEWAY_X",
        ];
        assert_eq!(
            ignored_env_vars(env),
            ["GATEWAY_PORT", "gateway_home", "GATEWAY_"]
        );
    }

    #[test]
    fn admin_off_loopback_needs_a_token() {
        let open = format!("{BASE}\nadmin: {{ listen: \"0.0.0.0:9180\" }}");
        assert!(err(&open).contains("admin.listen: 0.0.0.0:9180 is not a loopback address"));
        let with_token =
            format!("{BASE}\nadmin: {{ listen: \"0.0.0.0:9180\", token: 0123456789abcdef0123 }}");
        assert!(from_yaml_str(&with_token).is_ok());
    }
}
