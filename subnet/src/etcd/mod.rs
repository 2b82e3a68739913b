//! The etcd v3 subnet manager, wire-compatible with flannel's.
//!
//! Keys: `<prefix>/config` holds net-conf.json; `<prefix>/subnets/<subnet key>` holds
//! LeaseAttrs JSON attached to an etcd lease (24 h TTL), or to none for a reservation.
//!
//! Where weft deliberately differs from flannel:
//! - a create conflict is retried (up to [`MAX_ATTEMPTS`]); flannel's retry is dead code;
//! - reservations (keys without an etcd lease) stay reservations: never given a TTL;
//! - every write of an existing key is guarded by its ModRevision, so a node never
//!   overwrites a lease another node just took;
//! - renewal revokes the previous etcd lease instead of leaving it to expire;
//! - listing does not ask etcd for every key's TTL (flannel does one RPC per key): peers'
//!   expirations are never used, and this keeps a 5,000-node listing one request;
//! - a malformed lease or a key that is not a subnet is logged once and skipped.

mod retrying;

pub use crate::backoff::Backoff;

use crate::alloc::{self, Action, Claimant, CreateReason, OutOfSubnets};
use crate::config::{ConfigError, NetworkConfig};
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::observer::{Observer, WatchRestart, unobserved};
use crate::watch::{DatastoreEvent, WatchBatch};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// flannel's lease TTL: 24 hours.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How many create/update conflicts `acquire_lease` survives before giving up.
pub const MAX_ATTEMPTS: u32 = 32;
/// flannel's default key prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// TLS material for the etcd connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// How to reach etcd and how to lease. Its `Debug` shows no password.
#[derive(Clone)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: TlsFiles,
    /// TTL of the etcd lease attached to this node's subnet key.
    pub lease_ttl: Duration,
    /// Upper bound for one unary etcd request.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("lease_ttl", &self.lease_ttl)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> EtcdOptions {
        EtcdOptions {
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            username: None,
            password: None,
            tls: TlsFiles::default(),
            lease_ttl: DEFAULT_LEASE_TTL,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A failed etcd operation.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot read etcd TLS file {path}: {cause}")]
    TlsFile {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot connect to etcd at {endpoints}: {cause}")]
    Connect {
        endpoints: String,
        cause: etcd_client::Error,
    },
    #[error("etcd {op} failed: {cause}")]
    Request {
        op: &'static str,
        cause: etcd_client::Error,
    },
    #[error("etcd {op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
}

/// Why the network config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFetchError {
    #[error(
        "flannel config not found in etcd store at {key}. Did you create your config using etcdv3 API?"
    )]
    NotFound { key: String },
    #[error("invalid network config in etcd key {key}: {cause}")]
    Invalid { key: String, cause: ConfigError },
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// Why no lease could be acquired.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error(transparent)]
    OutOfSubnets(#[from] OutOfSubnets),
    #[error("gave up acquiring a subnet after {0} conflicting writes by other nodes")]
    TooManyConflicts(u32),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// The result of renewing this node's lease.
#[derive(Debug, Clone, PartialEq)]
pub enum RenewOutcome {
    Renewed(Lease),
    /// The key changed under us: deleted (`None`) or rewritten, possibly by another node.
    Lost {
        current: Option<Lease>,
    },
}

/// Leases per page when listing (see `list_leases_at`).
const LIST_PAGE: i64 = 1000;

/// The end of the key range holding every key that starts with `prefix` (etcd's
/// `--prefix`: the prefix with its last byte below 0xff incremented).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

/// Where the store was when a response was sent: enough to notice that etcd went back
/// in time. In one store's history the revision and the raft term never decrease and
/// the cluster ID never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorePosition {
    pub cluster_id: u64,
    pub revision: i64,
    pub raft_term: u64,
}

impl StorePosition {
    pub fn from_header(header: Option<&etcd_client::ResponseHeader>) -> Option<StorePosition> {
        header.map(|h| StorePosition {
            cluster_id: h.cluster_id(),
            revision: h.revision(),
            raft_term: h.raft_term(),
        })
    }

    /// Why `now` cannot come after `self` in the same store's history, if it cannot.
    pub fn went_back(&self, now: &StorePosition) -> Option<String> {
        if self.cluster_id != 0 && now.cluster_id != 0 && self.cluster_id != now.cluster_id {
            return Some(format!(
                "etcd's cluster ID changed from {:x} to {:x}",
                self.cluster_id, now.cluster_id
            ));
        }
        if now.revision < self.revision {
            return Some(format!(
                "etcd's revision went back from {} to {}",
                self.revision, now.revision
            ));
        }
        if now.raft_term != 0 && now.raft_term < self.raft_term {
            return Some(format!(
                "etcd's raft term went back from {} to {}",
                self.raft_term, now.raft_term
            ));
        }
        None
    }
}

/// The etcd operations, as reported to the [`DatastoreObserver`](crate::observer::DatastoreObserver)
/// (`watch_leases` also covers a broken watch stream).
pub const OPERATIONS: [&str; 9] = [
    "get_config",
    "list_leases",
    "get_lease",
    "create_lease",
    "update_lease",
    "delete_lease",
    "grant_lease",
    "revoke_lease",
    "watch_leases",
];

/// The observer label of a request named `op` in error messages ("list leases").
fn operation_label(op: &'static str) -> &'static str {
    match op {
        "get config" => "get_config",
        "list leases" => "list_leases",
        "get lease" => "get_lease",
        "create lease" => "create_lease",
        "update lease" => "update_lease",
        "delete lease" => "delete_lease",
        "grant lease" => "grant_lease",
        "revoke lease" => "revoke_lease",
        _ => "watch_leases",
    }
}

/// Leases subnets from etcd; see the module docs.
pub struct EtcdSubnetManager {
    client: Client,
    /// Hears every contact and failure (metrics); ignores them by default.
    observer: Observer,
    prefix: String,
    lease_ttl: Duration,
    timeout: Duration,
    /// (key, ModRevision) of malformed entries already logged, so each is logged once.
    warned: Mutex<HashSet<(String, i64)>>,
}

impl EtcdSubnetManager {
    /// Creates the client. Without username/password this does not contact etcd yet.
    pub async fn connect(options: &EtcdOptions) -> Result<EtcdSubnetManager, EtcdError> {
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let (Some(user), Some(password)) = (&options.username, &options.password) {
            connect = connect.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = tls_options(&options.tls)? {
            connect = connect.with_tls(tls);
        }
        let endpoints = options.endpoints.join(",");
        let client = tokio::time::timeout(
            options.request_timeout,
            Client::connect(&options.endpoints, Some(connect)),
        )
        .await
        .map_err(|_| EtcdError::Connect {
            endpoints: endpoints.clone(),
            cause: etcd_client::Error::InvalidArgs(format!(
                "no answer within {:?}",
                options.request_timeout
            )),
        })?
        .map_err(|cause| EtcdError::Connect { endpoints, cause })?;
        Ok(EtcdSubnetManager {
            client,
            observer: unobserved(),
            prefix: options.prefix.trim_end_matches('/').to_string(),
            lease_ttl: options.lease_ttl,
            timeout: options.request_timeout,
            warned: Mutex::new(HashSet::new()),
        })
    }

    /// Reports contacts, failed requests and watch restarts to `observer`.
    pub fn with_observer(mut self, observer: Observer) -> EtcdSubnetManager {
        self.observer = observer;
        self
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    pub fn lease_key(&self, key: &SubnetKey) -> String {
        format!("{}{key}", self.subnets_prefix())
    }

    async fn call<T>(
        &self,
        op: &'static str,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        let result = match tokio::time::timeout(self.timeout, request).await {
            Ok(result) => result.map_err(|cause| EtcdError::Request { op, cause }),
            Err(_) => Err(EtcdError::Timeout {
                op,
                after: self.timeout,
            }),
        };
        match &result {
            Ok(_) => self.observer.contact(),
            Err(_) => self.observer.error(operation_label(op)),
        }
        result
    }

    /// Reads and validates `<prefix>/config`.
    pub async fn network_config(&self) -> Result<NetworkConfig, ConfigFetchError> {
        let key = self.config_key();
        let response = self
            .call("get config", self.client.clone().get(key.clone(), None))
            .await?;
        let Some(kv) = response.kvs().first() else {
            return Err(ConfigFetchError::NotFound { key });
        };
        let text = String::from_utf8_lossy(kv.value());
        NetworkConfig::parse(&text).map_err(|cause| ConfigFetchError::Invalid { key, cause })
    }

    /// Lists all well-formed leases and the store revision of the listing.
    pub async fn list_leases(&self) -> Result<(Vec<Lease>, i64), EtcdError> {
        let (leases, position) = self.list_leases_at().await?;
        Ok((leases, position.map_or(0, |p| p.revision)))
    }

    /// Lists all well-formed leases and where the store was for the listing.
    ///
    /// In pages of [`LIST_PAGE`] keys, all read at the first page's revision (one
    /// consistent snapshot): only one page's response is decoded at a time (at 15,000
    /// leases one response was ~3 MiB of protobuf plus its decoded copy, next to the
    /// leases), and no response nears gRPC's 4 MiB message limit at any cluster size.
    async fn list_leases_at(&self) -> Result<(Vec<Lease>, Option<StorePosition>), EtcdError> {
        let prefix = self.subnets_prefix().into_bytes();
        let end = prefix_end(&prefix);
        let mut from = prefix;
        let mut leases = Vec::new();
        let mut position: Option<StorePosition> = None;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if let Some(at) = &position {
                options = options.with_revision(at.revision);
            }
            let response = self
                .call(
                    "list leases",
                    self.client.clone().get(from.clone(), Some(options)),
                )
                .await?;
            if position.is_none() {
                position = StorePosition::from_header(response.header());
            }
            leases.extend(
                response
                    .kvs()
                    .iter()
                    .filter_map(|kv| self.lease_from_kv(kv)),
            );
            let next = response.kvs().last().map(|kv| {
                let mut key = kv.key().to_vec();
                // The smallest key after the last one.
                key.push(0);
                key
            });
            match next {
                // Without a revision in the header the pages could not be one snapshot.
                Some(key) if response.more() && position.is_some() => from = key,
                _ => break,
            }
        }
        Ok((leases, position))
    }

    /// Turns a key/value into a lease; malformed entries are logged once and skipped.
    fn lease_from_kv(&self, kv: &KeyValue) -> Option<Lease> {
        let full_key = String::from_utf8_lossy(kv.key());
        let name = full_key
            .strip_prefix(&self.subnets_prefix())
            .unwrap_or(&full_key);
        let parsed = SubnetKey::parse(name)
            .map_err(|e| e.to_string())
            .and_then(|key| {
                LeaseAttrs::from_json(kv.value())
                    .map(|a| (key, a))
                    .map_err(|e| e.to_string())
            });
        match parsed {
            Ok((key, attrs)) => Some(Lease {
                key,
                attrs,
                etcd_lease: kv.lease(),
                expiration: None,
                revision: kv.mod_revision(),
            }),
            Err(reason) => {
                self.warn_once(&full_key, kv.mod_revision(), &reason);
                None
            }
        }
    }

    fn warn_once(&self, key: &str, revision: i64, reason: &str) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned.len() > 10_000 {
            warned.clear();
        }
        if warned.insert((key.to_string(), revision)) {
            warn!(key, revision, "skipping malformed entry in etcd: {reason}");
        }
    }

    /// Acquires a lease for this node (flannel's `AcquireLease`, with conflicts retried).
    ///
    /// `attrs.public_ip` / `public_ipv6` identify the node; `previous` is the subnet pair
    /// from the old subnet.env.
    pub async fn acquire_lease(
        &self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: Option<SubnetKey>,
    ) -> Result<Lease, AcquireError> {
        let claimant = Claimant {
            public_ip: config.ipv4.is_some().then_some(attrs.public_ip),
            public_ipv6: attrs.public_ipv6,
        };
        for attempt in 1..=MAX_ATTEMPTS {
            let (leases, listed) = self.list_leases().await?;
            let plan = {
                let mut rng = rand::rng();
                alloc::plan(config, &leases, &claimant, previous, &mut rng)?
            };
            if let Some(stale) = &plan.delete {
                info!(
                    subnet = %stale.key,
                    "deleting this node's lease: it does not fit the network config any more"
                );
                if !self.delete_if_unchanged(stale).await? {
                    continue;
                }
            }
            let outcome = match &plan.action {
                Action::Reuse(existing) => {
                    let lease = self.rewrite(existing, attrs).await?;
                    if lease.is_some() {
                        info!(subnet = %existing.key, reservation = existing.is_reservation(),
                            "reusing the lease that carries this node's public IP");
                    }
                    lease
                }
                Action::Create { key, reason } => {
                    let lease = self.create(key, attrs, listed).await?;
                    if lease.is_some() {
                        let why = match reason {
                            CreateReason::Previous => {
                                "the subnet from the previous subnet.env is free"
                            }
                            CreateReason::Random => "picked a free subnet",
                        };
                        info!(subnet = %key, "leased a new subnet: {why}");
                    }
                    lease
                }
            };
            if let Some(lease) = outcome {
                return Ok(lease);
            }
            debug!(
                attempt,
                "another node wrote the same subnet first; retrying"
            );
            let jitter = rand::random_range(5..=50u64) * u64::from(attempt.min(10));
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
        Err(AcquireError::TooManyConflicts(MAX_ATTEMPTS))
    }

    /// Renews this node's lease: a fresh TTL, guarded by the key's ModRevision.
    pub async fn renew_lease(&self, lease: &Lease) -> Result<RenewOutcome, EtcdError> {
        match self.rewrite(lease, &lease.attrs).await? {
            Some(renewed) => Ok(RenewOutcome::Renewed(renewed)),
            None => Ok(RenewOutcome::Lost {
                current: self.get_lease(&lease.key).await?,
            }),
        }
    }

    /// Rewrites this node's lease with new attributes (its public IP changed), keeping its
    /// subnet; `Lost` when the lease is no longer the one this node wrote.
    pub async fn update_lease_attrs(
        &self,
        lease: &Lease,
        attrs: &LeaseAttrs,
    ) -> Result<RenewOutcome, EtcdError> {
        match self.rewrite(lease, attrs).await? {
            Some(updated) => Ok(RenewOutcome::Renewed(updated)),
            None => Ok(RenewOutcome::Lost {
                current: self.get_lease(&lease.key).await?,
            }),
        }
    }

    /// Reads one lease; `None` when the key is absent or malformed.
    pub async fn get_lease(&self, key: &SubnetKey) -> Result<Option<Lease>, EtcdError> {
        let response = self
            .call(
                "get lease",
                self.client.clone().get(self.lease_key(key), None),
            )
            .await?;
        Ok(response.kvs().first().and_then(|kv| self.lease_from_kv(kv)))
    }

    /// Creates `key` if absent and no lease was created since the listing at revision
    /// `listed` that `key` was planned on. `Ok(None)` means another node got there first.
    ///
    /// The key alone is not enough: a dual-stack key names both subnets
    /// (`10.244.51.0-24&fc00:0:0:60::-64`), so two nodes that picked the same IPv4 subnet
    /// with different IPv6 ones wrote two different keys, and both held 10.244.51.0/24
    /// (seen in the tests, about once in 255 simultaneous starts). flannel has the same
    /// race. Any lease created since the listing may overlap; then the plan is made again
    /// from a new listing.
    async fn create(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        listed: i64,
    ) -> Result<Option<Lease>, EtcdError> {
        let etcd_key = self.lease_key(key);
        let prefix = self.subnets_prefix().into_bytes();
        let mut conditions = vec![Compare::create_revision(
            etcd_key.clone(),
            CompareOp::Equal,
            0,
        )];
        if listed > 0 {
            conditions.push(
                Compare::create_revision(prefix.clone(), CompareOp::Less, listed + 1)
                    .with_range(prefix_end(&prefix)),
            );
        }
        let grant = self.grant().await?;
        let txn = Txn::new().when(conditions).and_then([TxnOp::put(
            etcd_key,
            attrs.to_json(),
            Some(PutOptions::new().with_lease(grant)),
        )]);
        let result = self
            .call("create lease", self.client.clone().txn(txn))
            .await;
        match result {
            Ok(response) if response.succeeded() => Ok(Some(Lease {
                key: *key,
                attrs: attrs.clone(),
                etcd_lease: grant,
                expiration: Some(SystemTime::now() + self.lease_ttl),
                revision: response.header().map_or(0, |h| h.revision()),
            })),
            other => {
                self.revoke(grant).await;
                other.map(|_| None)
            }
        }
    }

    /// Rewrites an existing lease with `attrs` and a fresh TTL (none for a reservation),
    /// if nobody changed it since `existing.revision`. `Ok(None)` means it changed.
    async fn rewrite(
        &self,
        existing: &Lease,
        attrs: &LeaseAttrs,
    ) -> Result<Option<Lease>, EtcdError> {
        let etcd_key = self.lease_key(&existing.key);
        let grant = if existing.is_reservation() {
            0
        } else {
            self.grant().await?
        };
        let put_options = (grant != 0).then(|| PutOptions::new().with_lease(grant));
        let txn = Txn::new()
            .when([Compare::mod_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                existing.revision,
            )])
            .and_then([TxnOp::put(etcd_key, attrs.to_json(), put_options)]);
        let result = self
            .call("update lease", self.client.clone().txn(txn))
            .await;
        match result {
            Ok(response) if response.succeeded() => {
                if existing.etcd_lease != 0 && existing.etcd_lease != grant {
                    // The key moved to the new lease; the old one holds nothing now.
                    self.revoke(existing.etcd_lease).await;
                }
                Ok(Some(Lease {
                    key: existing.key,
                    attrs: attrs.clone(),
                    etcd_lease: grant,
                    expiration: (grant != 0).then(|| SystemTime::now() + self.lease_ttl),
                    revision: response.header().map_or(0, |h| h.revision()),
                }))
            }
            other => {
                if grant != 0 {
                    self.revoke(grant).await;
                }
                other.map(|_| None)
            }
        }
    }

    /// Deletes a lease if unchanged since it was read; `Ok(false)` if it changed.
    async fn delete_if_unchanged(&self, lease: &Lease) -> Result<bool, EtcdError> {
        let etcd_key = self.lease_key(&lease.key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                lease.revision,
            )])
            .and_then([TxnOp::delete(etcd_key, None)]);
        let response = self
            .call("delete lease", self.client.clone().txn(txn))
            .await?;
        Ok(response.succeeded())
    }

    async fn grant(&self) -> Result<i64, EtcdError> {
        let ttl = i64::try_from(self.lease_ttl.as_secs())
            .unwrap_or(i64::MAX)
            .max(1);
        let response = self
            .call("grant lease", self.client.clone().lease_grant(ttl, None))
            .await?;
        Ok(response.id())
    }

    /// Best effort: an unrevoked lease just expires later.
    async fn revoke(&self, id: i64) {
        if let Err(e) = self
            .call("revoke lease", self.client.clone().lease_revoke(id))
            .await
        {
            debug!(lease = id, "could not revoke etcd lease: {e}");
        }
    }

    /// Streams all leases to `sink` until the receiver is dropped: a snapshot first, then
    /// events. Reconnects with backoff (100 ms doubling to 5 s) and re-lists when the watch
    /// revision was compacted or history may have been lost. Writes of the config key are
    /// passed on as [`WatchBatch::Config`].
    ///
    /// Watch continuity: every response's header is compared with the last one seen. A
    /// lower revision or raft term, or another cluster ID, means etcd may have gone back
    /// in time (a restored snapshot, an empty data directory): resuming from the old
    /// revision would wait for a revision that is now in the future and see nothing. The
    /// watch re-lists, and when the (linearizable) listing confirms it, sends
    /// [`WatchBatch::StoreReset`] before the snapshot.
    pub async fn watch_leases(&self, sink: mpsc::Sender<WatchBatch>) {
        self.watch_leases_from(None, sink).await;
    }

    /// As [`Self::watch_leases`], but resumes from `start` (a revision) when given,
    /// without an initial snapshot; a compacted `start` leads to a fresh snapshot.
    pub async fn watch_leases_from(&self, start: Option<i64>, sink: mpsc::Sender<WatchBatch>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut next_revision: Option<i64> = start;
        let mut position: Option<StorePosition> = None;
        loop {
            if sink.is_closed() {
                return;
            }
            let start = match next_revision {
                Some(revision) => revision,
                None => match self.list_leases_at().await {
                    Ok((leases, listed)) => {
                        let reset = match (position, listed) {
                            (Some(last), Some(now)) => last.went_back(&now),
                            _ => None,
                        };
                        if let Some(reason) = reset {
                            warn!("{reason}: the datastore went back in time; re-listing leases");
                            if sink.send(WatchBatch::StoreReset(reason)).await.is_err() {
                                return;
                            }
                        }
                        if sink.send(WatchBatch::Snapshot(leases)).await.is_err() {
                            return;
                        }
                        backoff.reset();
                        position = listed;
                        listed.map_or(1, |p| p.revision + 1)
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        warn!("cannot list leases, retrying in {delay:?}: {e}");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                },
            };
            next_revision = Some(start);
            let mut cursor = WatchCursor {
                next_revision: &mut next_revision,
                position: &mut position,
                backoff: &mut backoff,
            };
            let end = self.watch_from(start, &sink, &mut cursor).await;
            self.observer.watch_open(false);
            match end {
                WatchEnd::ReceiverGone => return,
                WatchEnd::Compacted(compacted) => {
                    self.observer.watch_restart(WatchRestart::Compacted);
                    info!(
                        from = start,
                        compacted, "watch history was compacted; re-listing leases"
                    );
                    next_revision = None;
                }
                WatchEnd::WentBack(reason) => {
                    // A member that lags behind can answer a watch with an older revision
                    // than a read saw; a (linearizable) listing settles it.
                    self.observer.watch_restart(WatchRestart::WentBack);
                    info!(from = start, "{reason} on the watch; re-listing to check");
                    next_revision = None;
                }
                WatchEnd::Failed(reason) => {
                    self.observer.watch_restart(WatchRestart::Error);
                    let delay = backoff.next_delay();
                    warn!("lease watch interrupted, reconnecting in {delay:?}: {reason}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn watch_from(
        &self,
        start: i64,
        sink: &mpsc::Sender<WatchBatch>,
        cursor: &mut WatchCursor<'_>,
    ) -> WatchEnd {
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(start);
        // The whole network prefix: the subnets and the config key.
        let mut stream = match self
            .call(
                "watch leases",
                self.client
                    .clone()
                    .watch(format!("{}/", self.prefix), Some(options)),
            )
            .await
        {
            Ok(stream) => stream,
            Err(e) => return WatchEnd::Failed(e.to_string()),
        };
        self.observer.watch_open(true);
        loop {
            let response = tokio::select! {
                response = stream.message() => response,
                () = sink.closed() => return WatchEnd::ReceiverGone,
            };
            let response = match response {
                Ok(Some(response)) => response,
                Ok(None) => {
                    self.observer.error("watch_leases");
                    return WatchEnd::Failed("etcd closed the watch stream".into());
                }
                Err(e) => {
                    self.observer.error("watch_leases");
                    return WatchEnd::Failed(e.to_string());
                }
            };
            self.observer.contact();
            if response.compact_revision() > 0 {
                return WatchEnd::Compacted(response.compact_revision());
            }
            if response.canceled() {
                self.observer.error("watch_leases");
                return WatchEnd::Failed(format!("watch canceled: {}", response.cancel_reason()));
            }
            if let Some(now) = StorePosition::from_header(response.header()) {
                // The creation response of a watch resumed at `start` names the store's
                // current revision: below `start - 1`, the store lost history we saw.
                let expected = StorePosition {
                    revision: cursor
                        .position
                        .map_or(start - 1, |p| p.revision.max(start - 1)),
                    ..cursor.position.unwrap_or(now)
                };
                if let Some(reason) = expected.went_back(&now) {
                    return WatchEnd::WentBack(reason);
                }
                *cursor.position = Some(now);
                *cursor.next_revision = Some(now.revision + 1);
            }
            cursor.backoff.reset();
            let config_key = self.config_key();
            let mut events = Vec::new();
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                if kv.key() == config_key.as_bytes() {
                    let value = (event.event_type() == EventType::Put)
                        .then(|| String::from_utf8_lossy(kv.value()).into_owned());
                    if sink.send(WatchBatch::Config(value)).await.is_err() {
                        return WatchEnd::ReceiverGone;
                    }
                } else if kv.key().starts_with(self.subnets_prefix().as_bytes()) {
                    events.extend(self.convert(event));
                }
            }
            if !events.is_empty() && sink.send(WatchBatch::Events(events)).await.is_err() {
                return WatchEnd::ReceiverGone;
            }
        }
    }

    fn convert(&self, event: &etcd_client::Event) -> Option<DatastoreEvent> {
        let kv = event.kv()?;
        match event.event_type() {
            EventType::Put => self.lease_from_kv(kv).map(DatastoreEvent::Put),
            EventType::Delete => {
                let full_key = String::from_utf8_lossy(kv.key());
                let name = full_key
                    .strip_prefix(&self.subnets_prefix())
                    .unwrap_or(&full_key);
                let key = SubnetKey::parse(name).ok()?;
                let previous = event.prev_kv().and_then(|prev| self.lease_from_kv(prev));
                Some(DatastoreEvent::Delete { key, previous })
            }
        }
    }
}

impl std::fmt::Debug for EtcdSubnetManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSubnetManager")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

enum WatchEnd {
    ReceiverGone,
    Compacted(i64),
    /// A response looked older than what was seen before (see
    /// [`StorePosition::went_back`]); to be confirmed by a listing.
    WentBack(String),
    Failed(String),
}

/// What a watch updates as responses arrive.
struct WatchCursor<'a> {
    next_revision: &'a mut Option<i64>,
    position: &'a mut Option<StorePosition>,
    backoff: &'a mut Backoff,
}

fn tls_options(files: &TlsFiles) -> Result<Option<TlsOptions>, EtcdError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|cause| EtcdError::TlsFile {
            path: path.clone(),
            cause,
        })
    };
    let mut tls = None;
    // As in flannel, a client certificate is used only when both cert and key are given.
    if let (Some(cert), Some(key)) = (&files.cert_file, &files.key_file) {
        tls = Some(TlsOptions::new().identity(Identity::from_pem(read(cert)?, read(key)?)));
    }
    // Unlike flannel, a CA alone is honoured: server-authenticated TLS without a client cert.
    if let Some(ca) = &files.ca_file {
        tls = Some(
            tls.unwrap_or_default()
                .ca_certificate(Certificate::from_pem(read(ca)?)),
        );
    }
    if tls.is_none() {
        warn!("no certificate provided: connecting to etcd with http. This is insecure");
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::{EtcdOptions, StorePosition, prefix_end};

    #[test]
    fn debug_output_never_shows_the_password() {
        let mut options = EtcdOptions::new(vec!["https://198.18.0.1:2379".into()]);
        options.password = Some("hunter2-secret".into());
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn the_prefix_range_ends_after_the_last_key_with_the_prefix() {
        assert_eq!(
            prefix_end(b"/coreos.com/network/subnets/"),
            b"/coreos.com/network/subnets0"
        );
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    fn at(cluster_id: u64, revision: i64, raft_term: u64) -> StorePosition {
        StorePosition {
            cluster_id,
            revision,
            raft_term,
        }
    }

    #[test]
    fn a_store_that_went_back_in_time_is_recognised() {
        let last = at(0xabc, 100, 4);
        assert_eq!(last.went_back(&at(0xabc, 100, 4)), None);
        assert_eq!(last.went_back(&at(0xabc, 250, 5)), None);
        assert_eq!(
            last.went_back(&at(0xabc, 42, 4)).as_deref(),
            Some("etcd's revision went back from 100 to 42")
        );
        assert_eq!(
            last.went_back(&at(0xdef, 300, 9)).as_deref(),
            Some("etcd's cluster ID changed from abc to def")
        );
        assert_eq!(
            last.went_back(&at(0xabc, 120, 2)).as_deref(),
            Some("etcd's raft term went back from 4 to 2")
        );
        // Unknown fields (0) prove nothing.
        assert_eq!(last.went_back(&at(0, 120, 0)), None);
    }
}
