//! Validation: the raw file ([`super::raw`]) checked key by key into the
//! internal [`Config`]; every problem is listed with its key path. Nothing
//! here touches the world: DNS, secret files and memory come through
//! [`Resolve`].

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use ipnet::IpNet;

use super::raw::{self, CacheSize, QueryMode, RangeMiss, RawConfig};
use super::resolve::{auto_cache_size, Resolve};
use super::types::*;
use super::Invalid;

/// Collects every problem of a file, each with its key path.
#[derive(Default)]
struct Checker {
    problems: Vec<Invalid>,
}

impl Checker {
    fn fail(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Invalid {
            key: key.into(),
            message: message.into(),
        });
    }

    fn addr(&mut self, key: &str, value: &str) -> Option<SocketAddr> {
        match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.fail(
                    key,
                    format!("{value:?} is not an IP:port address (e.g. 0.0.0.0:8080)"),
                );
                None
            }
        }
    }

    fn nets(&mut self, key: &str, values: &[String]) -> Vec<IpNet> {
        let mut out = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            match parse_net(v) {
                Some(n) => out.push(n),
                None => self.fail(
                    format!("{key}[{i}]"),
                    format!("{v:?} is not a CIDR (10.0.0.0/8) or an IP address"),
                ),
            }
        }
        out
    }

    fn nonzero(&mut self, key: &str, v: Option<u32>) -> Option<NonZeroU32> {
        let v = v?;
        let n = NonZeroU32::new(v);
        if n.is_none() {
            self.fail(key, "must be > 0");
        }
        n
    }

    fn positive(&mut self, key: &str, d: Duration) -> Duration {
        if d.is_zero() {
            self.fail(key, "must be > 0");
        }
        d
    }
}

/// `cache.targeted_field`: a field name of its own (RFC 9213 §2), or empty.
fn targeted_field(c: &mut Checker, name: &str) -> Option<http::HeaderName> {
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    match http::HeaderName::from_bytes(name.as_bytes()) {
        Ok(n) if n == http::header::CACHE_CONTROL || n == "cdn-cache-control" => {
            c.fail(
                "cache.targeted_field",
                format!("{name:?} is a field every cache reads: name one for this gateway (e.g. Gateway-Cache-Control), or \"\" for none"),
            );
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            c.fail(
                "cache.targeted_field",
                format!("{name:?} is not a header field name (letters, digits, '-')"),
            );
            None
        }
    }
}

/// `10.0.0.0/8`, `::1/128`, or a bare address (a /32 or /128).
fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Checks a parsed file and builds the internal [`Config`], or lists every problem.
pub(super) fn validate(raw: RawConfig, world: &dyn Resolve) -> Result<Config, Vec<Invalid>> {
    let mut c = Checker::default();
    let mut source = raw.clone();
    if source.admin.token.is_some() {
        source.admin.token = Some("<redacted>".into());
    }

    let listen = c.addr("listen", &raw.listen);
    if raw.upstream_keepalive_pool_size == 0 {
        c.fail("upstream_keepalive_pool_size", "must be > 0");
    }
    if raw.threads == 0 {
        c.fail("threads", "must be > 0");
    }

    let shutdown = Shutdown {
        drain_delay: raw.shutdown.drain_delay,
        grace_period: raw.shutdown.grace_period,
    };
    if shutdown.grace_period.subsec_nanos() != 0 || shutdown.grace_period.is_zero() {
        c.fail(
            "shutdown.grace_period",
            "must be a whole number of seconds > 0 (Pingora counts the grace period in seconds)",
        );
    }
    if shutdown.drain_delay >= shutdown.grace_period {
        c.fail(
            "shutdown.drain_delay",
            "must be shorter than shutdown.grace_period",
        );
    }

    let trusted_proxies = c.nets("trusted_proxies", &raw.trusted_proxies);
    if let Some(p) = &raw.ready_path {
        if !p.starts_with('/') || p.contains(['?', '#']) {
            c.fail("ready_path", "must be a plain path starting with '/'");
        }
    }

    let rc = &raw.client;
    if rc.max_connections == 0 {
        c.fail("client.max_connections", "must be > 0");
    }
    if rc.max_header_bytes.as_u64() == 0 || rc.max_header_bytes.as_u64() > PINGORA_MAX_HEADER_BYTES
    {
        c.fail(
            "client.max_header_bytes",
            "must be between 1 byte and 1MiB (Pingora's own hard cap)",
        );
    }
    if rc.max_headers == 0 || rc.max_headers > PINGORA_MAX_HEADERS {
        c.fail(
            "client.max_headers",
            format!("must be between 1 and {PINGORA_MAX_HEADERS} (Pingora's own hard cap)"),
        );
    }
    let client = ClientLimits {
        max_connections: rc.max_connections,
        max_header_bytes: rc.max_header_bytes.as_u64() as usize,
        max_headers: rc.max_headers,
        header_timeout: c.positive("client.header_timeout", rc.header_timeout),
        max_body_size: rc.max_body_size.as_u64(),
        keepalive_timeout: rc.keepalive_timeout,
        h2_max_streams: rc.h2_max_streams,
    };
    if rc.h2_max_streams == 0 {
        c.fail("client.h2_max_streams", "must be > 0");
    }

    let admin_listen = c.addr("admin.listen", &raw.admin.listen);
    let token = admin_token(&mut c, &raw.admin, world);
    if let (Some(a), None) = (admin_listen, &token) {
        if !a.ip().is_loopback() {
            c.fail(
                "admin.listen",
                format!(
                    "{a} is not a loopback address and no admin token is set: \
                     set admin.token or admin.token_file (or GATEWAY_ADMIN__TOKEN)"
                ),
            );
        }
    }
    if let (Some(a), Some(l)) = (admin_listen, listen) {
        if a == l {
            c.fail("admin.listen", "must differ from listen");
        }
    }

    let target = match raw.access_log.path.as_str() {
        "stdout" => LogTarget::Stdout,
        "stderr" => LogTarget::Stderr,
        "" => {
            c.fail("access_log.path", "must be stdout, stderr or a file path");
            LogTarget::Stdout
        }
        p => LogTarget::File(PathBuf::from(p)),
    };

    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    for (name, ru) in &raw.upstreams {
        upstreams.push(upstream(&mut c, name, ru, world));
    }

    let rcache = &raw.cache;
    let max_size = match rcache.max_size {
        CacheSize::Bytes(b) => b.as_u64(),
        CacheSize::Auto => auto_cache_size(world.memory_limit()),
    };
    if max_size == 0 {
        c.fail("cache.max_size", "must be > 0");
    }
    if rcache.max_object_size.as_u64() == 0 || rcache.max_object_size.as_u64() > max_size {
        c.fail(
            "cache.max_object_size",
            "must be > 0 and at most cache.max_size",
        );
    }
    let cache = Cache {
        max_size,
        max_object_size: rcache.max_object_size.as_u64(),
        purge_allow: c.nets("cache.purge_allow", &rcache.purge_allow),
        status_key: rcache.status_key,
        lock_timeout: c.positive("cache.lock_timeout", rcache.lock_timeout),
        keep_surrogate_keys: rcache.keep_surrogate_keys,
        targeted_field: targeted_field(&mut c, &rcache.targeted_field),
        forward_targeted: rcache.forward_targeted,
        shared: None,
    };
    let mut cache = cache;
    let redis = raw
        .shared
        .redis
        .as_ref()
        .and_then(|r| shared_redis(&mut c, r, world));
    let rshared = &rcache.shared;
    if rshared.enabled {
        let size = rshared.max_object_size.as_u64();
        if size == 0 || size > cache.max_object_size {
            c.fail(
                "cache.shared.max_object_size",
                "must be > 0 and at most cache.max_object_size",
            );
        }
        if raw.shared.redis.is_none() {
            c.fail(
                "cache.shared.enabled",
                "needs shared.redis (the Redis the instances share)",
            );
        }
        cache.shared = Some(SharedCache {
            max_object_size: size,
        });
    }

    let compression = compression(&mut c, &raw.compression);
    let tls = raw
        .tls
        .as_ref()
        .and_then(|t| tls(&mut c, t, listen, admin_listen, world));

    if raw.routes.is_empty() {
        c.fail("routes", "at least one route is needed");
    }
    let index: BTreeMap<&str, usize> = raw
        .upstreams
        .keys()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let mut names = HashSet::new();
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, rr) in raw.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        if let Some(r) = route(&mut c, &key, rr, &index, &mut names, &raw.cache) {
            let up = &upstreams[r.upstream];
            let upstream_limited = up.max_inflight.is_some() || up.adaptive.is_some();
            if r.limits.queue.is_some() && r.limits.max_inflight.is_none() && !upstream_limited {
                c.fail(
                    format!("{key}.limits.queue"),
                    "a queue needs limits.max_inflight on the route or on its upstream",
                );
            }
            if r.limits.rate.as_ref().is_some_and(|r| r.shared) && raw.shared.redis.is_none() {
                c.fail(
                    format!("{key}.limits.rate.shared"),
                    "needs shared.redis (the Redis the instances share)",
                );
            }
            routes.push(r);
        }
    }

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    Ok(Config {
        listen: listen.expect("checked above"),
        threads: raw.threads,
        pid_file: PathBuf::from(raw.pid_file),
        upgrade_sock: PathBuf::from(raw.upgrade_sock),
        upstream_keepalive_pool_size: raw.upstream_keepalive_pool_size,
        shutdown,
        trusted_proxies,
        ready_path: raw.ready_path.clone(),
        client,
        admin: Admin {
            listen: admin_listen.expect("checked above"),
            token,
        },
        access_log: AccessLog {
            enabled: raw.access_log.enabled,
            target,
        },
        upstreams,
        cache,
        tls,
        compression,
        redis,
        routes,
        source,
    })
}

/// `compression:`: known, distinct codings.
fn compression(c: &mut Checker, rc: &raw::RawCompression) -> Compression {
    let mut algorithms = Vec::with_capacity(rc.algorithms.len());
    for (i, name) in rc.algorithms.iter().enumerate() {
        match crate::compression::Encoding::parse(name) {
            Some(e) if algorithms.contains(&e) => c.fail(
                format!("compression.algorithms[{i}]"),
                format!("{name:?} is listed twice"),
            ),
            Some(e) => algorithms.push(e),
            None => c.fail(
                format!("compression.algorithms[{i}]"),
                format!("{name:?} is not one of br, gzip, zstd"),
            ),
        }
    }
    if rc.enabled && rc.algorithms.is_empty() {
        c.fail(
            "compression.algorithms",
            "needs at least one of br, gzip, zstd",
        );
    }
    Compression {
        enabled: rc.enabled,
        algorithms,
        min_size: rc.min_size.as_u64(),
    }
}

/// `tls.acme:`; `None` after a problem (recorded in `c`).
fn acme(c: &mut Checker, a: &raw::RawAcme, world: &dyn Resolve) -> Option<Acme> {
    let before = c.problems.len();
    let email = a.email.trim();
    if email.is_empty() || !email.contains('@') || email.contains(char::is_whitespace) {
        c.fail(
            "tls.acme.email",
            "must be an e-mail address (the CA's expiry notices)",
        );
    }
    if a.domains.is_empty() {
        c.fail("tls.acme.domains", "must name at least one domain");
    }
    let mut domains = Vec::new();
    for d in &a.domains {
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        if d.starts_with("*.") {
            c.fail(
                "tls.acme.domains",
                format!("{d}: a wildcard name needs a dns-01 challenge; the gateway answers http-01 only"),
            );
        } else if d.parse::<IpAddr>().is_ok() || !is_dns_name(&d) {
            c.fail("tls.acme.domains", format!("{d:?} is not a DNS name"));
        } else if !domains.contains(&d) {
            domains.push(d);
        }
    }
    if !a.directory.starts_with("https://") && !a.directory.starts_with("http://") {
        c.fail(
            "tls.acme.directory",
            "must be an http(s) URL of an ACME directory",
        );
    }
    let directory_ca = a.directory_ca.as_ref().map(PathBuf::from);
    if let Some(ca) = &directory_ca {
        if let Err(e) = world.read_file(&ca.to_string_lossy()) {
            c.fail("tls.acme.directory_ca", format!("{}: {e}", ca.display()));
        }
    }
    let storage = PathBuf::from(&a.storage);
    if !storage.is_absolute() {
        c.fail("tls.acme.storage", "must be an absolute path");
    }
    let renew_before = c.positive("tls.acme.renew_before", a.renew_before);
    (c.problems.len() == before).then(|| Acme {
        email: email.to_owned(),
        domains,
        directory: a.directory.clone(),
        directory_ca,
        storage,
        renew_before,
    })
}

/// Letters, digits and hyphens in dot-separated labels of 1..=63, 253 at most.
fn is_dns_name(d: &str) -> bool {
    d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `tls:`: listeners, certificates (read and parsed here, so that a broken
/// file refuses the configuration), version and HSTS.
fn tls(
    c: &mut Checker,
    t: &raw::RawTls,
    listen: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    world: &dyn Resolve,
) -> Option<Tls> {
    let mut addrs = Vec::with_capacity(t.listen.len());
    if t.listen.is_empty() {
        c.fail("tls.listen", "needs at least one address");
    }
    for (i, a) in t.listen.iter().enumerate() {
        let key = format!("tls.listen[{i}]");
        if let Some(a) = c.addr(&key, a) {
            if Some(a) == listen || Some(a) == admin || addrs.contains(&a) {
                c.fail(key, format!("{a} is already a listener of this file"));
            }
            addrs.push(a);
        }
    }
    if t.certificates.is_empty() && t.acme.is_none() {
        c.fail(
            "tls.certificates",
            "needs at least one {cert, key} pair (or tls.acme)",
        );
    }
    let mut files = Vec::with_capacity(t.certificates.len());
    for (i, pair) in t.certificates.iter().enumerate() {
        let mut read = |field: &str, path: &str| match world.read_file(path) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                c.fail(
                    format!("tls.certificates[{i}].{field}"),
                    format!("cannot read {path:?}: {e}"),
                );
                None
            }
        };
        let cert = read("cert", &pair.cert);
        let key = read("key", &pair.key);
        if let (Some(cert), Some(key)) = (cert, key) {
            files.push((i, pair, cert, key));
        }
    }
    let pems: Vec<_> = files
        .iter()
        .map(|(_, p, cert, key)| crate::certs::PemPair {
            cert_path: &p.cert,
            cert_pem: cert,
            key_path: &p.key,
            key_pem: key,
        })
        .collect();
    let store = if files.len() == t.certificates.len() {
        match crate::certs::CertStore::load(&pems) {
            Ok(s) => Some(s),
            Err(errors) => {
                for (i, msg) in errors {
                    c.fail(format!("tls.certificates[{}]", files[i].0), msg);
                }
                None
            }
        }
    } else {
        None
    };
    let min_version = match t.min_version.trim() {
        "1.2" => Some(TlsVersion::Tls12),
        "1.3" => Some(TlsVersion::Tls13),
        other => {
            c.fail(
                "tls.min_version",
                format!("{other:?} is not \"1.2\" or \"1.3\""),
            );
            None
        }
    };
    let handshake_timeout = c.positive("tls.handshake_timeout", t.handshake_timeout);
    let hsts = t.hsts.as_ref().and_then(|h| {
        if h.max_age.subsec_nanos() != 0 {
            c.fail("tls.hsts.max_age", "must be a whole number of seconds");
            return None;
        }
        let mut v = format!("max-age={}", h.max_age.as_secs());
        if h.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        http::HeaderValue::from_str(&v).ok()
    });
    let acme = match &t.acme {
        Some(a) => Some(acme(c, a, world)?),
        None => None,
    };
    Some(Tls {
        https_port: addrs.first().map_or(443, |a| a.port()),
        listen: addrs,
        certificates: store?,
        min_version: min_version?,
        handshake_timeout,
        redirect_http: t.redirect_http,
        hsts,
        acme,
    })
}

/// `shared.redis`: the URL (scheme, no password in it), the password and CA
/// files (read through `world`), the pool and breaker bounds.
fn shared_redis(c: &mut Checker, r: &raw::RawRedis, world: &dyn Resolve) -> Option<Redis> {
    let before = c.problems.len();
    let tls = match r.url.split_once("://").map(|(s, _)| s) {
        Some("redis") => false,
        Some("rediss") => true,
        _ => {
            c.fail(
                "shared.redis.url",
                format!("{:?} is not a redis:// or rediss:// URL", r.url),
            );
            false
        }
    };
    match http::Uri::try_from(r.url.as_str()) {
        Ok(u) if u.authority().is_some_and(|a| !a.host().is_empty()) => {
            let userinfo = u.authority().and_then(|a| a.as_str().rsplit_once('@'));
            if userinfo.is_some_and(|(user, _)| user.contains(':')) {
                c.fail(
                    "shared.redis.url",
                    "must not hold a password: put it in shared.redis.password_file",
                );
            }
            let db = u.path().trim_start_matches('/');
            if !db.is_empty() && db.parse::<u32>().is_err() {
                c.fail(
                    "shared.redis.url",
                    format!("the path {db:?} must be a database number"),
                );
            }
        }
        _ => c.fail(
            "shared.redis.url",
            format!("{:?} is not a URL with a host", r.url),
        ),
    }
    let password = r
        .password_file
        .as_ref()
        .and_then(|path| match world.read_secret(path) {
            Ok(s) => {
                let p = s.lines().next().unwrap_or("").trim().to_owned();
                if p.is_empty() {
                    c.fail(
                        "shared.redis.password_file",
                        format!("{path}: the password (first line) is empty"),
                    );
                }
                Some(p)
            }
            Err(e) => {
                c.fail(
                    "shared.redis.password_file",
                    format!("cannot read {path}: {e}"),
                );
                None
            }
        });
    let ca_pem = r.ca_file.as_ref().and_then(|path| {
        if !tls {
            c.fail("shared.redis.ca_file", "goes with a rediss:// URL");
        }
        match world.read_secret(path) {
            Ok(s) if s.contains("-----BEGIN CERTIFICATE-----") => Some(s.into_bytes()),
            Ok(_) => {
                c.fail(
                    "shared.redis.ca_file",
                    format!("{path}: no PEM certificate in it"),
                );
                None
            }
            Err(e) => {
                c.fail("shared.redis.ca_file", format!("cannot read {path}: {e}"));
                None
            }
        }
    });
    if r.pool_size == 0 {
        c.fail("shared.redis.pool_size", "must be > 0");
    }
    let timeout = c.positive("shared.redis.timeout", r.timeout);
    let open_for = c.positive("shared.redis.open_for", r.open_for);
    let consecutive = c.nonzero(
        "shared.redis.consecutive_failures",
        Some(r.consecutive_failures),
    );
    if r.key_prefix.is_empty()
        || !r
            .key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        c.fail(
            "shared.redis.key_prefix",
            "must be letters, digits and - _ . : (it goes inside a {hash tag})",
        );
    }
    if c.problems.len() > before {
        return None;
    }
    Some(Redis {
        url: r.url.clone(),
        tls,
        password,
        ca_pem,
        pool_size: r.pool_size,
        timeout,
        breaker: Breaker {
            consecutive_failures: consecutive?,
            open_for,
            error_ratio: None,
            window: Duration::from_secs(10),
            min_requests: 1,
            min_available: 0,
            count_overload: false,
        },
        key_prefix: r.key_prefix.clone(),
    })
}

fn admin_token(c: &mut Checker, a: &raw::RawAdmin, world: &dyn Resolve) -> Option<String> {
    match (&a.token, &a.token_file) {
        (Some(_), Some(_)) => {
            c.fail(
                "admin.token",
                "set admin.token or admin.token_file, not both",
            );
            None
        }
        (Some(t), None) => {
            let t = t.trim();
            if t.len() < 16 {
                c.fail("admin.token", "must be at least 16 characters");
            }
            Some(t.to_owned())
        }
        (None, Some(path)) => match world.read_secret(path) {
            Ok(s) => {
                let t = s.lines().next().unwrap_or("").trim().to_owned();
                if t.len() < 16 {
                    c.fail(
                        "admin.token_file",
                        format!("{path}: the token (first line) must be at least 16 characters"),
                    );
                }
                Some(t)
            }
            Err(e) => {
                c.fail("admin.token_file", format!("cannot read {path}: {e}"));
                None
            }
        },
        (None, None) => None,
    }
}

fn upstream(c: &mut Checker, name: &str, ru: &raw::RawUpstream, world: &dyn Resolve) -> Upstream {
    let key = format!("upstreams.{name}");
    if !valid_name(name) {
        c.fail(
            &key,
            "upstream names use letters, digits, '-', '_' and '.' only",
        );
    }
    if ru.servers.is_empty() {
        c.fail(format!("{key}.servers"), "needs at least one server");
    }
    let mut servers = Vec::new();
    for (i, spec) in ru.servers.iter().enumerate() {
        let skey = format!("{key}.servers[{i}]");
        match world.addresses(spec) {
            Ok(addrs) => {
                for addr in addrs {
                    let s = Server {
                        spec: spec.clone(),
                        addr,
                    };
                    if !servers.contains(&s) {
                        servers.push(s);
                    }
                }
            }
            Err(msg) => c.fail(skey, msg),
        }
    }
    let health_check = ru.health_check.as_ref().map(|h| {
        if h.path.as_ref().is_some_and(|p| !p.starts_with('/')) {
            c.fail(format!("{key}.health_check.path"), "must start with '/'");
        }
        let k = format!("{key}.health_check");
        if h.timeout > h.interval {
            c.fail(
                format!("{k}.timeout"),
                "must be at most health_check.interval",
            );
        }
        HealthCheck {
            path: h.path.clone(),
            interval: c.positive(&format!("{k}.interval"), h.interval),
            timeout: c.positive(&format!("{k}.timeout"), h.timeout),
            healthy_threshold: c
                .nonzero(&format!("{k}.healthy_threshold"), Some(h.healthy_threshold))
                .unwrap_or(NonZeroU32::MIN),
            unhealthy_threshold: c
                .nonzero(
                    &format!("{k}.unhealthy_threshold"),
                    Some(h.unhealthy_threshold),
                )
                .unwrap_or(NonZeroU32::MIN),
        }
    });
    let breaker = ru.breaker.as_ref().map(|b| Breaker {
        consecutive_failures: c
            .nonzero(
                &format!("{key}.breaker.consecutive_failures"),
                Some(b.consecutive_failures),
            )
            .unwrap_or(NonZeroU32::MIN),
        open_for: c.positive(&format!("{key}.breaker.open_for"), b.open_for),
        error_ratio: b.error_ratio.inspect(|r| {
            if !(*r > 0.0 && *r <= 1.0) {
                c.fail(format!("{key}.breaker.error_ratio"), "must be in (0, 1]");
            }
        }),
        window: c.positive(&format!("{key}.breaker.window"), b.window),
        min_requests: b.min_requests.max(1),
        min_available: b.min_available,
        count_overload: b.count_overload,
    });
    let adaptive = ru.limits.adaptive.as_ref().map(|a| {
        if a.min == 0 || a.min > a.max {
            c.fail(
                format!("{key}.limits.adaptive.min"),
                "must be between 1 and adaptive.max",
            );
        }
        if a.tolerance <= 1.0 {
            c.fail(
                format!("{key}.limits.adaptive.tolerance"),
                "must be > 1 (e.g. 2.0)",
            );
        }
        Adaptive {
            min: a.min,
            max: a.max,
            tolerance: a.tolerance,
        }
    });
    Upstream {
        name: name.to_owned(),
        servers,
        health_check,
        connect_timeout: c.positive(&format!("{key}.connect_timeout"), ru.connect_timeout),
        read_timeout: c.positive(&format!("{key}.read_timeout"), ru.read_timeout),
        idle_timeout: ru.idle_timeout,
        retries: ru.retries,
        max_inflight: c.nonzero(
            &format!("{key}.limits.max_inflight"),
            ru.limits.max_inflight,
        ),
        adaptive,
        breaker,
    }
}

fn header_names(c: &mut Checker, key: &str, names: &[String]) -> Vec<http::HeaderName> {
    let mut out = Vec::new();
    for (i, n) in names.iter().enumerate() {
        match http::HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()) {
            Ok(h) => out.push(h),
            Err(_) => c.fail(format!("{key}[{i}]"), format!("{n:?} is not a header name")),
        }
    }
    out
}

fn route_cache(
    c: &mut Checker,
    key: &str,
    rc: &raw::RawRouteCache,
    global: &raw::RawCache,
) -> RouteCache {
    if let (Some(min), Some(max)) = (rc.min_ttl, rc.max_ttl) {
        if min > max {
            c.fail(format!("{key}.min_ttl"), "must not exceed max_ttl");
        }
    }
    let k = &rc.key;
    let query = match (k.query, k.query_allow.is_empty(), k.query_ignore.is_empty()) {
        (_, false, false) => {
            c.fail(
                format!("{key}.key.query_allow"),
                "set query_allow or query_ignore, not both",
            );
            QueryKey::All
        }
        (QueryMode::All, true, true) => QueryKey::All,
        (QueryMode::All, false, true) => QueryKey::Allow(k.query_allow.clone()),
        (QueryMode::All, true, false) => QueryKey::Ignore(k.query_ignore.clone()),
        (QueryMode::None, true, true) => QueryKey::None,
        (QueryMode::None, _, _) => {
            c.fail(
                format!("{key}.key.query"),
                "query: none takes no query_allow / query_ignore",
            );
            QueryKey::None
        }
    };
    RouteCache {
        default_ttl: rc.default_ttl.filter(|_| rc.heuristic),
        stale_while_revalidate: rc.stale_while_revalidate,
        stale_if_error: rc.stale_if_error,
        cache_set_cookie: rc.cache_set_cookie,
        keep_surrogate_keys: rc.keep_surrogate_keys.unwrap_or(global.keep_surrogate_keys),
        min_ttl: rc.min_ttl,
        max_ttl: rc.max_ttl,
        query,
        key_headers: header_names(c, &format!("{key}.key.headers"), &k.headers),
        key_cookies: k.cookies.clone(),
        bypass_cookies: rc.bypass.cookies.clone(),
        bypass_headers: header_names(c, &format!("{key}.bypass.headers"), &rc.bypass.headers),
        cookie_requests: rc.cookie_requests,
        forward_range_misses: rc.range_miss == RangeMiss::Forward,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Methods a route may list; anything else is most likely a typo.
const KNOWN_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PURGE",
];

fn route(
    c: &mut Checker,
    key: &str,
    rr: &raw::RawRoute,
    upstreams: &BTreeMap<&str, usize>,
    names: &mut HashSet<String>,
    global_cache: &raw::RawCache,
) -> Option<Route> {
    if rr.name.is_empty() {
        c.fail(format!("{key}.name"), "is required");
    } else if !valid_name(&rr.name) {
        c.fail(
            format!("{key}.name"),
            "route names use letters, digits, '-', '_' and '.' only",
        );
    } else if !names.insert(rr.name.clone()) {
        c.fail(
            format!("{key}.name"),
            format!("duplicate route name {:?}", rr.name),
        );
    }

    let upstream = if rr.upstream.is_empty() {
        c.fail(format!("{key}.upstream"), "is required");
        None
    } else {
        let found = upstreams.get(rr.upstream.as_str()).copied();
        if found.is_none() {
            c.fail(
                format!("{key}.upstream"),
                format!("no upstream named {:?} in upstreams", rr.upstream),
            );
        }
        found
    };

    let m = &rr.matcher;
    let path_prefix = if !m.path_prefix.starts_with('/') {
        c.fail(format!("{key}.match.path_prefix"), "must start with '/'");
        "/".to_owned()
    } else if m.path_prefix.contains(['?', '#']) || m.path_prefix.contains("//") {
        c.fail(
            format!("{key}.match.path_prefix"),
            "must be a plain path (no '?', '#' or '//')",
        );
        "/".to_owned()
    } else if m.path_prefix.len() > 1 {
        m.path_prefix.trim_end_matches('/').to_owned()
    } else {
        "/".to_owned()
    };
    let methods = m.methods.as_ref().map(|ms| {
        if ms.is_empty() {
            c.fail(
                format!("{key}.match.methods"),
                "must list at least one method, or be left out",
            );
        }
        let mut out = Vec::with_capacity(ms.len());
        for (i, s) in ms.iter().enumerate() {
            if KNOWN_METHODS.contains(&s.as_str()) {
                out.push(Method::from_bytes(s.as_bytes()).expect("known method"));
            } else {
                c.fail(
                    format!("{key}.match.methods[{i}]"),
                    format!(
                        "unknown method {s:?} (expected one of {})",
                        KNOWN_METHODS.join(", ")
                    ),
                );
            }
        }
        out
    });
    let host = m.host.as_ref().and_then(|h| {
        let h = h.trim().to_ascii_lowercase();
        let (wild, rest) = match h.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, h.as_str()),
        };
        let ok = !rest.is_empty()
            && rest.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            c.fail(
                format!("{key}.match.host"),
                format!("{h:?} is not a host name or *.suffix pattern (no port)"),
            );
            return None;
        }
        Some(if wild {
            HostMatch::Suffix(format!(".{rest}"))
        } else {
            HostMatch::Exact(h.clone())
        })
    });

    let extensions = m.extensions.as_ref().map(|exts| {
        if exts.is_empty() {
            c.fail(
                format!("{key}.match.extensions"),
                "must list at least one extension, or be left out",
            );
        }
        exts.iter()
            .enumerate()
            .map(|(i, e)| {
                let e = e.trim().trim_start_matches('.').to_ascii_lowercase();
                if e.is_empty() || !e.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    c.fail(
                        format!("{key}.match.extensions[{i}]"),
                        format!("{e:?} is not a file extension (letters and digits, e.g. css)"),
                    );
                }
                e
            })
            .collect()
    });

    let allow_from = rr
        .allow_from
        .as_ref()
        .map(|v| c.nets(&format!("{key}.allow_from"), v));

    let cache = rr
        .cache
        .as_ref()
        .filter(|rc| rc.enabled)
        .map(|rc| route_cache(c, &format!("{key}.cache"), rc, global_cache));

    let rl = &rr.limits;
    let limits = RouteLimits {
        max_inflight: c.nonzero(&format!("{key}.limits.max_inflight"), rl.max_inflight),
        queue: rl.queue.as_ref().map(|q| Queue {
            max_len: q.max_len,
            timeout: c.positive(&format!("{key}.limits.queue.timeout"), q.timeout),
        }),
        rate: rl.rate.as_ref().and_then(|r| match r.per_client {
            Some(per_client) => Some(Rate {
                per_client,
                burst: r.burst.unwrap_or(per_client.count).max(1),
                key_header: r.key_header.as_ref().and_then(|h| {
                    let names = header_names(
                        c,
                        &format!("{key}.limits.rate.key_header"),
                        std::slice::from_ref(h),
                    );
                    names.into_iter().next()
                }),
                max_clients: r.max_clients.max(1),
                shared: r.shared,
            }),
            None => {
                c.fail(
                    format!("{key}.limits.rate.per_client"),
                    "is required in a rate block",
                );
                None
            }
        }),
    };

    Some(Route {
        name: rr.name.clone(),
        matcher: RouteMatch {
            path_prefix,
            methods,
            host,
            extensions,
        },
        upstream: upstream?,
        allow_from,
        cache,
        limits,
        compression: rr.compression.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::{Format, Yaml};

    /// A world with one DNS name, one secret file and 2 GiB of memory.
    struct Fake;

    impl Resolve for Fake {
        fn addresses(&self, spec: &str) -> Result<Vec<SocketAddr>, String> {
            match spec {
                "app.internal:5000" => Ok(vec![
                    "10.0.0.5:5000".parse().unwrap(),
                    "10.0.0.6:5000".parse().unwrap(),
                ]),
                _ => Err(format!("cannot resolve {spec:?}")),
            }
        }
        fn read_secret(&self, path: &str) -> std::io::Result<String> {
            match path {
                "/secret/token" => Ok("0123456789abcdef0123\nignored".into()),
                _ => Err(std::io::ErrorKind::NotFound.into()),
            }
        }
        fn memory_limit(&self) -> Option<u64> {
            Some(2 << 30)
        }
        fn read_file(&self, _path: &str) -> std::io::Result<Vec<u8>> {
            Err(std::io::ErrorKind::NotFound.into())
        }
    }

    fn check(yaml: &str) -> Result<Config, Vec<Invalid>> {
        let raw: RawConfig = figment::Figment::from(Yaml::string(yaml))
            .extract()
            .unwrap();
        validate(raw, &Fake)
    }

    #[test]
    fn resolution_goes_through_the_world_it_is_given() {
        let c = check(
            r#"
admin: { token_file: /secret/token }
cache: { max_size: auto }
upstreams: { app: { servers: ["app.internal:5000"] } }
routes: [ { name: a, match: { path_prefix: / }, upstream: app } ]
"#,
        )
        .unwrap();
        let addrs: Vec<String> = c.upstreams[0]
            .servers
            .iter()
            .map(|s| s.addr.to_string())
            .collect();
        assert_eq!(
            addrs,
            ["10.0.0.5:5000", "10.0.0.6:5000"],
            "each address a server"
        );
        assert_eq!(c.admin.token.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(c.cache.max_size, 512 << 20, "a quarter of the memory");
        let problems = check(
            r#"
admin: { token_file: /nowhere }
upstreams: { app: { servers: ["db.internal:5000"] } }
routes: [ { name: a, match: { path_prefix: / }, upstream: app } ]
"#,
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["admin.token_file", "upstreams.app.servers[0]"]);
    }

    #[test]
    fn acme_names_the_key_of_each_problem_and_needs_no_certificate_files() {
        let base = r#"
upstreams: { app: { servers: ["app.internal:5000"] } }
routes: [ { name: a, match: { path_prefix: / }, upstream: app } ]
tls:
  listen: ["127.0.0.1:8443"]
  acme:
"#;
        let c = check(&format!(
            "{base}    email: ops@example.com\n    domains: [Example.COM., www.example.com, example.com]\n"
        ))
        .unwrap();
        let acme = c.tls.unwrap().acme.unwrap();
        assert_eq!(
            acme.domains,
            ["example.com", "www.example.com"],
            "lower case, once each"
        );
        assert_eq!(acme.directory, raw::LETS_ENCRYPT);
        assert_eq!(acme.renew_before, Duration::from_secs(30 * 86_400));
        let problems = check(&format!(
            "{base}    email: nobody\n    domains: [\"*.example.com\", 10.0.0.1, \"bad_name.example\"]\n    \
             storage: relative/dir\n    directory_ca: /nowhere/ca.pem\n    directory: ftp://x\n    renew_before: 0s\n"
        ))
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tls.acme.email",
                "tls.acme.domains",
                "tls.acme.domains",
                "tls.acme.domains",
                "tls.acme.directory",
                "tls.acme.directory_ca",
                "tls.acme.storage",
                "tls.acme.renew_before"
            ]
        );
        assert!(
            problems[1].message.contains("dns-01"),
            "{}",
            problems[1].message
        );
    }

    #[test]
    fn shared_redis_is_checked_and_its_secret_read_through_the_world() {
        let c = check(
            r#"
shared: { redis: { url: "rediss://user@cache.internal:6379/0", password_file: /secret/token, timeout: 20ms } }
cache: { shared: { enabled: true, max_object_size: 1MiB } }
upstreams: { app: { servers: ["app.internal:5000"] } }
routes: [ { name: a, match: { path_prefix: / }, upstream: app, limits: { rate: { per_client: 10/s, shared: true } } } ]
"#,
        )
        .unwrap();
        let r = c.redis.as_ref().unwrap();
        assert!(r.tls);
        assert_eq!(r.password.as_deref(), Some("0123456789abcdef0123"));
        assert!(!format!("{r:?}").contains("0123456789"), "redacted");
        assert_eq!(c.cache.shared.unwrap().max_object_size, 1 << 20);
        assert!(c.routes[0].limits.rate.as_ref().unwrap().shared);
        let problems = check(
            r#"
shared: { redis: { url: "http://x:1", password_file: /nowhere, pool_size: 0, timeout: 0s, key_prefix: "a}b" } }
upstreams: { app: { servers: ["app.internal:5000"] } }
routes: [ { name: a, match: { path_prefix: / }, upstream: app } ]
"#,
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "shared.redis.url",
                "shared.redis.password_file",
                "shared.redis.pool_size",
                "shared.redis.timeout",
                "shared.redis.key_prefix"
            ]
        );
        let problems = check(
            r#"
shared: { redis: { url: "redis://:secret@cache.internal:6379" } }
cache: { shared: { enabled: true, max_object_size: 1GiB } }
upstreams: { app: { servers: ["app.internal:5000"] } }
routes: [ { name: a, match: { path_prefix: / }, upstream: app } ]
"#,
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["shared.redis.url", "cache.shared.max_object_size"]);
        let problems = check(
            r#"
cache: { shared: { enabled: true } }
upstreams: { app: { servers: ["app.internal:5000"] } }
routes: [ { name: a, match: { path_prefix: / }, upstream: app, limits: { rate: { per_client: 10/s, shared: true } } } ]
"#,
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["cache.shared.enabled", "routes[0].limits.rate.shared"]
        );
    }
}
