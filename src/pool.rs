//! Upstream pools: the origin addresses of one upstream (host names re-resolved as they
//! change), picked round-robin or by consistent hash among the healthy ones. Active health
//! checks (TCP connect or an HTTP path) run on a timer; a backend that refuses a connection
//! is also ejected at once for a while (passive ejection), so the retry goes elsewhere.

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthCheck as Check, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};

use crate::metrics::metrics;

/// How a pool picks a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancing {
    RoundRobin,
    /// By a hash of the request's host and path: one resource keeps going to one backend
    /// while the set of healthy backends is stable.
    ConsistentHash,
}

/// How backends are probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connection opens.
    Tcp,
    /// `GET path` answers below 400.
    Http { path: String },
}

/// An active health check's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: Probe,
    pub every: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring an unhealthy backend back.
    pub healthy_after: usize,
    /// Consecutive failures that take a healthy backend out.
    pub unhealthy_after: usize,
}

/// What a pool is made of, from `levy.upstreams.<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// The upstream's name (metric labels).
    pub name: String,
    /// `host:port` as written; names are resolved again every `resolve_every`.
    pub addresses: Vec<String>,
    pub balance: Balancing,
    pub health_check: Option<HealthCheck>,
    /// How long a backend that refused a connection is skipped.
    pub eject_for: Duration,
    pub resolve_every: Duration,
    /// `Host` of HTTP health checks, and their SNI over TLS.
    pub host: String,
    pub tls: bool,
}

/// Why a pool cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot resolve `{0}`")]
    Unresolvable(String),
    #[error("cannot start the pool: {0}")]
    Start(String),
}

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Hash(LoadBalancer<Consistent>),
}

/// A running pool.
pub struct Pool {
    spec: PoolSpec,
    balancer: Balancer,
    ejected: Mutex<HashMap<SocketAddr, Instant>>,
    due: Mutex<Due>,
}

struct Due {
    check: Instant,
    resolve: Instant,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("spec", &self.spec).finish()
    }
}

/// Re-resolves the pool's `host:port` entries on each discovery; a name that does not
/// resolve this time is left out, and if none resolves the membership is kept as it was.
struct Resolver {
    addresses: Vec<String>,
    /// What the first discovery returns: the addresses resolved at config load.
    initial: Mutex<Option<BTreeSet<Backend>>>,
}

#[async_trait]
impl ServiceDiscovery for Resolver {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let initial = self
            .initial
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(resolved) = initial {
            return Ok((resolved, HashMap::new()));
        }
        let mut found = BTreeSet::new();
        for address in &self.addresses {
            match tokio::net::lookup_host(address.as_str()).await {
                Ok(addrs) => found.extend(addrs.map(backend)),
                Err(e) => log::warn!("upstream address `{address}` does not resolve: {e}"),
            }
        }
        if found.is_empty() {
            return Err(pingora::Error::explain(
                pingora::ErrorType::InternalError,
                "no upstream address resolves",
            ));
        }
        Ok((found, HashMap::new()))
    }
}

fn backend(addr: SocketAddr) -> Backend {
    Backend {
        addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
        weight: 1,
        ext: Default::default(),
    }
}

fn inet(backend: &Backend) -> Option<SocketAddr> {
    backend.addr.as_inet().copied()
}

fn untried<'a>(
    backends: &'a BTreeSet<Backend>,
    tried: &'a [SocketAddr],
) -> impl Iterator<Item = SocketAddr> + 'a {
    backends
        .iter()
        .filter_map(inet)
        .filter(move |a| !tried.contains(a))
}

impl Pool {
    /// Resolves every address now (a name that does not resolve is an error) and builds
    /// the pool with all backends healthy until checked. Blocks: call it where blocking is
    /// allowed (config load).
    pub fn start(spec: PoolSpec) -> Result<Pool, PoolError> {
        let mut resolved = BTreeSet::new();
        for address in &spec.addresses {
            let addrs = address
                .to_socket_addrs()
                .map_err(|_| PoolError::Unresolvable(address.clone()))?;
            let before = resolved.len();
            resolved.extend(addrs.map(backend));
            if resolved.len() == before {
                return Err(PoolError::Unresolvable(address.clone()));
            }
        }
        let discovery = Box::new(Resolver {
            addresses: spec.addresses.clone(),
            initial: Mutex::new(Some(resolved)),
        });
        let mut balancer = match spec.balance {
            Balancing::RoundRobin => {
                Balancer::RoundRobin(LoadBalancer::from_backends(Backends::new(discovery)))
            }
            Balancing::ConsistentHash => {
                Balancer::Hash(LoadBalancer::from_backends(Backends::new(discovery)))
            }
        };
        if let Some(check) = &spec.health_check {
            let probe = probe(check, &spec);
            match &mut balancer {
                Balancer::RoundRobin(lb) => lb.set_health_check(probe),
                Balancer::Hash(lb) => lb.set_health_check(probe),
            }
        }
        // The first membership is the one just resolved: no I/O, so a throwaway runtime
        // polls it to the end.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| PoolError::Start(e.to_string()))?;
        runtime
            .block_on(async {
                match &balancer {
                    Balancer::RoundRobin(lb) => lb.update().await,
                    Balancer::Hash(lb) => lb.update().await,
                }
            })
            .map_err(|e| PoolError::Start(e.to_string()))?;
        let now = Instant::now();
        let pool = Pool {
            balancer,
            ejected: Mutex::new(HashMap::new()),
            due: Mutex::new(Due {
                check: now,
                resolve: now + spec.resolve_every,
            }),
            spec,
        };
        Ok(pool)
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Whether the pool has more than one address to try.
    fn several(&self) -> bool {
        self.backends().len() > 1
    }

    fn backends(&self) -> std::sync::Arc<BTreeSet<Backend>> {
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends().get_backend(),
            Balancer::Hash(lb) => lb.backends().get_backend(),
        }
    }

    /// A healthy backend not in `tried` and not ejected; a consistent-hash pool hashes
    /// `host` and `path`. When every backend is down or tried, the least recently ejected
    /// untried one (a pool never refuses outright: the health check may lag behind a
    /// recovery). A one-backend pool answers without locking or hashing: on the request
    /// path for every upstream, most of which have one address.
    pub fn pick(&self, host: &str, path: &str, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let backends = self.backends();
        if backends.len() == 1 {
            return untried(&backends, tried).next();
        }
        let now = Instant::now();
        let ejected = self
            .ejected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let usable = |b: &Backend, healthy: bool| {
            inet(b).is_some_and(|a| {
                healthy && !tried.contains(&a) && ejected.get(&a).is_none_or(|until| *until <= now)
            })
        };
        const MAX_ITERATIONS: usize = 256;
        let chosen = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(&[], MAX_ITERATIONS, usable),
            Balancer::Hash(lb) => {
                let key = [host.as_bytes(), path.as_bytes()].concat();
                lb.select_with(&key, MAX_ITERATIONS, usable)
            }
        };
        if let Some(addr) = chosen.as_ref().and_then(inet) {
            return Some(addr);
        }
        untried(&backends, tried).min_by_key(|a| ejected.get(a).copied())
    }

    /// Whether a backend not in `tried` is left (where a failed connection can retry).
    pub fn has_untried(&self, tried: &[SocketAddr]) -> bool {
        untried(&self.backends(), tried).next().is_some()
    }

    /// Skips `addr` for `eject_for`, after it refused or timed out a connection.
    pub fn eject(&self, addr: SocketAddr) {
        if !self.several() {
            return;
        }
        log::warn!(
            "upstream `{}`: backend {addr} failed a connection, skipped for {:?}",
            self.spec.name,
            self.spec.eject_for
        );
        self.ejected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(addr, Instant::now() + self.spec.eject_for);
    }

    /// Runs what is due: the health check every `every`, a DNS re-resolution every
    /// `resolve_every`. Call it about once a second.
    pub async fn maintain(&self) {
        let now = Instant::now();
        let (check, resolve) = {
            let mut due = self
                .due
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let check = self.spec.health_check.as_ref().filter(|_| due.check <= now);
            if let Some(c) = check {
                due.check = now + c.every;
            }
            let resolve = due.resolve <= now && self.resolves_names();
            if resolve {
                due.resolve = now + self.spec.resolve_every;
            }
            (check.is_some(), resolve)
        };
        if resolve {
            // A failed resolution keeps the membership as it was.
            let _ = match &self.balancer {
                Balancer::RoundRobin(lb) => lb.update().await,
                Balancer::Hash(lb) => lb.update().await,
            };
        }
        if check {
            match &self.balancer {
                Balancer::RoundRobin(lb) => lb.backends().run_health_check(true).await,
                Balancer::Hash(lb) => lb.backends().run_health_check(true).await,
            }
            self.report();
        }
    }

    fn resolves_names(&self) -> bool {
        self.spec
            .addresses
            .iter()
            .any(|a| a.parse::<SocketAddr>().is_err())
    }

    /// `levy_upstream_backend_healthy{upstream,backend}`.
    fn report(&self) {
        for b in self.backends().iter() {
            let Some(addr) = inet(b) else { continue };
            let healthy = match &self.balancer {
                Balancer::RoundRobin(lb) => lb.backends().ready(b),
                Balancer::Hash(lb) => lb.backends().ready(b),
            };
            metrics()
                .upstream_healthy
                .with_label_values(&[self.spec.name.as_str(), &addr.to_string()])
                .set(i64::from(healthy));
        }
    }
}

fn probe(check: &HealthCheck, spec: &PoolSpec) -> Box<dyn Check + Send + Sync> {
    match &check.probe {
        Probe::Tcp => {
            let mut tcp = TcpHealthCheck::new();
            tcp.consecutive_success = check.healthy_after;
            tcp.consecutive_failure = check.unhealthy_after;
            tcp.peer_template.options.connection_timeout = Some(check.timeout);
            tcp
        }
        Probe::Http { path } => {
            let mut http = HttpHealthCheck::new(&spec.host, spec.tls);
            http.consecutive_success = check.healthy_after;
            http.consecutive_failure = check.unhealthy_after;
            http.peer_template.options.connection_timeout = Some(check.timeout);
            http.peer_template.options.read_timeout = Some(check.timeout);
            if let Ok(mut req) = pingora::http::RequestHeader::build("GET", path.as_bytes(), None) {
                let _ = req.append_header("Host", spec.host.as_str());
                http.req = req;
            }
            http.validator = Some(Box::new(|resp| {
                if resp.status.as_u16() < 400 {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::CustomCode("health check", resp.status.as_u16()),
                        "the health check path answered an error",
                    )
                }
            }));
            Box::new(http)
        }
    }
}
