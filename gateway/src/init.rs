//! `gateway init`: a complete, commented configuration for an app that knows
//! nothing about the gateway (no health endpoint, no cache headers tuned for
//! a proxy). The shipped `conf/gateway.yaml` is its output for
//! `--upstream 127.0.0.1:5000`.

/// What `gateway init` was asked for.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The app, `host:port`.
    pub upstream: String,
    /// The public listener.
    pub listen: String,
    /// The admin listener.
    pub admin: String,
    /// A path the app answers with 2xx when healthy; `None`: a TCP connect check.
    pub health_path: Option<String>,
}

/// Why `gateway init` refused its arguments.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// `--upstream` is not `host:port`.
    #[error("--upstream {0:?} is not host:port (e.g. 127.0.0.1:5000)")]
    Upstream(String),
    /// `--listen` or `--admin` is not `IP:port`.
    #[error("{flag} {value:?} is not IP:port (e.g. 0.0.0.0:80)")]
    Addr {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
    },
    /// `--health-path` does not start with `/`.
    #[error("--health-path {0:?} must start with '/'")]
    HealthPath(String),
}

/// The configuration text, or what is wrong with the options.
pub fn render(o: &InitOptions) -> Result<String, InitError> {
    let port_ok = o
        .upstream
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok || o.upstream.contains(['"', '\'', ' ', '#']) {
        return Err(InitError::Upstream(o.upstream.clone()));
    }
    for (flag, value) in [("--listen", &o.listen), ("--admin", &o.admin)] {
        if value.parse::<std::net::SocketAddr>().is_err() {
            return Err(InitError::Addr {
                flag,
                value: value.clone(),
            });
        }
    }
    let health = match &o.health_path {
        Some(p) if !p.starts_with('/') || p.contains(['"', '\'', ' ', '#', '?']) => {
            return Err(InitError::HealthPath(p.clone()))
        }
        Some(p) => format!("{{ path: {p}, interval: 2s, timeout: 1s }}"),
        None => "{ interval: 2s, timeout: 1s }".to_owned(),
    };
    let mut args = format!("--upstream {}", o.upstream);
    if o.listen != DEFAULT_LISTEN {
        args.push_str(&format!(" --listen {}", o.listen));
    }
    if o.admin != DEFAULT_ADMIN {
        args.push_str(&format!(" --admin {}", o.admin));
    }
    if let Some(p) = &o.health_path {
        args.push_str(&format!(" --health-path {p}"));
    }
    Ok(TEMPLATE
        .replace("@ARGS@", &args)
        .replace("@UPSTREAM@", &o.upstream)
        .replace("@LISTEN@", &o.listen)
        .replace("@ADMIN@", &o.admin)
        .replace("@HEALTH@", &health))
}

/// `--listen` default.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:80";
/// `--admin` default.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9180";

const TEMPLATE: &str = r#"# Gateway configuration for the app on @UPSTREAM@, written by
#   gateway init @ARGS@
#
# Check it with `gateway -t -c FILE`; apply changes to a running gateway with
# SIGHUP (`systemctl reload gateway`). Keys marked [restart] are read at start
# only. Every key is described in the README's configuration reference;
# environment variables override the file: GATEWAY_<KEY>, `__` between levels
# (GATEWAY_LISTEN=0.0.0.0:8080, GATEWAY_ADMIN__TOKEN_FILE=/etc/gateway/admin-token).
# Only variables whose first segment names a top-level key are read; other
# GATEWAY_* variables are ignored with a warning naming them.
# Durations: 250ms, 2s, 5m, 1h. Sizes: 64KiB, 256MiB, 1GiB.

# Public listener, IP:port (below 1024 needs root or CAP_NET_BIND_SERVICE,
# which the packaged systemd unit grants). [restart]
listen: "@LISTEN@"
# Worker threads of the proxy: one per core. [restart]
threads: 2
# Pid file and the socket a new binary (-u) takes the listeners over. -t and
# a start check that the running user can write their directories (systemd:
# RuntimeDirectory); as a non-root user set GATEWAY_PID_FILE and
# GATEWAY_UPGRADE_SOCK to paths you own. [restart]
pid_file: /run/gateway/gateway.pid
upgrade_sock: /run/gateway/upgrade.sock

# SIGTERM: readiness turns 503 at once, listeners keep accepting for
# drain_delay (longer than your load balancer needs to see the instance
# unhealthy: interval x unhealthy threshold), then in-flight requests finish,
# within grace_period (whole seconds).
shutdown: { drain_delay: 2s, grace_period: 10s }

# Peers whose X-Forwarded-For / Forwarded headers are believed. None: the
# socket peer is the client. Behind a load balancer, add the load balancer's
# subnets (e.g. the ALB's subnets, ["10.0.1.0/24", "10.0.2.0/24"]), never a
# whole VPC: any host in a trusted range can claim any client address.
trusted_proxies: []

# The main listener answers GET on this path with 200 while serving and 503
# once stopping (the admin port's /ready, reachable by a load balancer's
# health check). Not a route: never proxied, cached or counted as one.
ready_path: /.gateway/ready

client:
  max_connections: 10000
  # Beyond: 431 / 413 with a JSON body.
  max_header_bytes: 64KiB
  max_body_size: 10MiB
  # Slow clients: the whole header block within this (slowloris).
  header_timeout: 10s
  # Also how long an HTTP/2 connection with no request in progress stays open.
  keepalive_timeout: 60s
  # HTTP/2 (HTTPS only): concurrent requests per connection. [restart]
  h2_max_streams: 100

# HTTPS (rustls), HTTP/2 by ALPN. Uncomment with your certificate files (PEM;
# the chain with the leaf first). Each certificate answers for the names in it
# (exact and *.wildcard, chosen by SNI); the first also answers clients that
# send no known name. SIGHUP re-reads the files: a broken one is refused and
# the running certificates keep serving. Upstream requests then carry
# X-Forwarded-Proto: https.
#tls:
#  listen: ["0.0.0.0:443"]          # [restart]
#  certificates:
#    - { cert: /etc/gateway/tls/site.pem, key: /etc/gateway/tls/site.key }
#  min_version: "1.2"               # or "1.3"
#  handshake_timeout: 10s
#  # The plain listener answers 308 to https (except /.well-known/acme-challenge/
#  # and ready_path).
#  redirect_http: false
#  # Strict-Transport-Security on HTTPS responses; absent: none.
#  hsts: { max_age: 180d, include_subdomains: false }
#  # Or certificates without a human (ACME http-01; port 80 must reach
#  # `listen`). Renewed 30 days ahead, swapped in without a restart.
#  acme:
#    email: ops@example.com
#    domains: [example.com, www.example.com]
#    storage: /var/lib/gateway/acme

# gzip / brotli / zstd for clients that ask (Accept-Encoding, q-values
# honoured), for text, JSON, JavaScript, XML and SVG bodies of at least
# min_size. Done on the way out: the cache keeps one copy and compresses it
# for each client. Never for ranges, Cache-Control: no-transform or bodies the
# app already encoded. A route turns it off with `compression: false`.
compression: { enabled: true, algorithms: [br, gzip, zstd], min_size: 1KiB }

admin:
  # /health, /ready, /metrics and the /status page are open; /stats, /cache/*,
  # /limits, /upstreams, /config need `Authorization: Bearer <token>` (the
  # page asks for it: /status#token=... or its form). The token comes from
  # token_file (the packages generate /etc/gateway/admin-token and pass it in
  # GATEWAY_ADMIN__TOKEN_FILE) or GATEWAY_ADMIN__TOKEN. [restart]
  listen: "@ADMIN@"

access_log:
  # One JSON line per request, no query strings, headers or cookies.
  # stdout goes to the journal under systemd. path is [restart].
  enabled: true
  path: stdout

upstreams:
  app:
    servers: ["@UPSTREAM@"]
    # Without a path the check is a TCP connect; with `path: /health` a GET
    # that must answer 2xx. An unhealthy server gets no requests unless every
    # server is unhealthy.
    health_check: @HEALTH@
    connect_timeout: 1s
    # Longer than the app's slowest request (Gunicorn's --timeout is 30s).
    read_timeout: 30s
    # Requests in flight to the app at most, all routes together: about two
    # per app worker (Gunicorn sync workers serve one request each). More
    # wait in the routes' queues below instead of piling onto the app.
    limits: { max_inflight: 8 }
    # After 5 failures in a row (connect errors, timeouts, 5xx) the server is
    # probed again after 1s, 2s, ... up to 10s; min_available: 1 keeps a lone
    # server in rotation anyway, so a broken path never takes the others down.
    # A 503 or 429 with Retry-After (the app shedding load) is not a failure.
    breaker: { consecutive_failures: 5, open_for: 10s, min_available: 1, count_overload: false }

cache:
  # auto: a quarter of the memory the gateway may use (its cgroup limit, else
  # the machine's memory). Or a size: 64MiB. [restart]
  max_size: auto
  # Bigger responses stream through uncached. [restart]
  max_object_size: 8MiB
  # Who may send `PURGE <url>` to the main listener (socket peer).
  purge_allow: ["127.0.0.1/32", "::1/128"]
  # How the app talks to each cache (RFC 9213): the gateway follows this
  # field first, then CDN-Cache-Control, then Cache-Control (+ Expires);
  # Cache-Control keeps governing browsers. E.g. `Cache-Control: no-cache`,
  # `CDN-Cache-Control: max-age=60`, `Gateway-Cache-Control: max-age=3600`:
  # browsers revalidate, a CDN keeps it a minute, this gateway an hour. The
  # field is removed from client responses unless forward_targeted: true.
  # "" = none of its own.
  targeted_field: Gateway-Cache-Control
  forward_targeted: false
  # Several instances behind a load balancer: a second tier in the Redis of
  # `shared.redis` below (memory misses looked up there, stored responses
  # written there in the background; purges reach every instance). [restart]
  shared: { enabled: false, max_object_size: 1MiB }

# Redis shared by several gateway instances (second cache tier, purge
# fan-out, `rate: { ..., shared: true }` limits): a Redis or ElastiCache
# endpoint, not the app's database. Every call is bounded by `timeout`; after
# 3 failures in a row Redis is skipped for a while (memory and the app
# serve): it is never an outage. [restart]
# shared:
#   redis: { url: "rediss://gateway@my-cache.example.internal:6379/0", password_file: /etc/gateway/redis-password, pool_size: 16, timeout: 20ms }

# Routes, first match wins.
routes:
  # Static files by extension: stored for an hour when the app gives no
  # freshness of its own (RFC 9111 heuristic freshness; the app's own
  # Cache-Control and Expires always win), served stale for a day if the app
  # is down.
  - name: static
    match:
      path_prefix: /
      methods: [GET, HEAD]
      extensions: [css, js, mjs, map, png, jpg, jpeg, gif, svg, webp, avif, ico, woff, woff2, ttf, otf]
    upstream: app
    cache: { default_ttl: 1h, stale_if_error: 1d, cookie_requests: private }
    limits: { queue: { max_len: 1000, timeout: 10s } }

  # Everything else. Stored exactly when the app says so (Cache-Control
  # max-age / s-maxage / public, or Expires); never no-store, private or
  # Set-Cookie responses. A request with Authorization or a Cookie is only
  # stored and answered from the cache when the response says it may be
  # shared (public, s-maxage or must-revalidate): one user's page never
  # reaches another. Within a response's stale-if-error (default 5m here) a
  # stored copy answers while the app is down.
  - name: app
    match: { path_prefix: / }
    upstream: app
    cache: { stale_if_error: 5m, cookie_requests: private }
    # A burst waits in line (first come, first served) for one of the
    # upstream's slots for up to 10s instead of drowning the app; beyond
    # max_len or the timeout: 503 + Retry-After, or a stale copy. Add a
    # per-client rate limit if you need one (all clients behind one NAT share
    # an address unless trusted_proxies is set):
    #   rate: { per_client: 20/s, burst: 40 }
    limits: { queue: { max_len: 1000, timeout: 10s } }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(upstream: &str) -> InitOptions {
        InitOptions {
            upstream: upstream.into(),
            listen: DEFAULT_LISTEN.into(),
            admin: DEFAULT_ADMIN.into(),
            health_path: None,
        }
    }

    #[test]
    fn output_is_a_valid_configuration() {
        for health in [None, Some("/health".to_owned())] {
            let o = InitOptions {
                health_path: health.clone(),
                ..opts("127.0.0.1:5000")
            };
            let text = render(&o).unwrap();
            let c = crate::config::from_yaml_str(&text).unwrap();
            assert_eq!(c.listen.to_string(), "0.0.0.0:80");
            assert_eq!(c.upstreams[0].health_check.as_ref().unwrap().path, health);
            assert!(c.trusted_proxies.is_empty());
            assert_eq!(c.ready_path.as_deref(), Some("/.gateway/ready"));
        }
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(render(&opts("localhost")).is_err());
        assert!(render(&opts("h:0")).is_err());
        assert!(render(&opts("a b:5")).is_err());
        let bad_listen = InitOptions {
            listen: "80".into(),
            ..opts("127.0.0.1:5000")
        };
        assert!(render(&bad_listen).is_err());
        let bad_path = InitOptions {
            health_path: Some("health".into()),
            ..opts("127.0.0.1:5000")
        };
        assert!(render(&bad_path).is_err());
    }
}
