//! The etcd manager's startup steps, retried until they succeed: the retry decisions of
//! etcd mode live here, next to the Kubernetes manager's, not in the daemon. Each retry
//! says why in the log and through `report` (the daemon's readiness).

use super::{AcquireError, ConfigFetchError, EtcdError, EtcdOptions, EtcdSubnetManager};
use crate::backoff::Backoff;
use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use std::time::{Duration, Instant};
use tracing::{error, warn};

impl EtcdSubnetManager {
    /// Connects, retrying unreachable endpoints (500 ms doubling to 5 s). Unreadable TLS
    /// files are returned at once: no retry fixes them.
    pub async fn connect_retrying(options: &EtcdOptions) -> Result<EtcdSubnetManager, EtcdError> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        loop {
            match EtcdSubnetManager::connect(options).await {
                Ok(manager) => return Ok(manager),
                Err(e @ EtcdError::TlsFile { .. }) => return Err(e),
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!("{e}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Reads the network config until it is present, valid and accepted by `runnable`
    /// (the daemon's check that it can run the backend; its error is the problem text).
    /// A problem is logged once, then every 30 s while it lasts.
    pub async fn network_config_retrying(
        &self,
        runnable: &dyn Fn(&NetworkConfig) -> Result<(), String>,
        report: &mut dyn FnMut(&str),
    ) -> NetworkConfig {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let mut last_error = String::new();
        let mut last_logged = Instant::now();
        loop {
            let problem = match self.network_config().await {
                Ok(config) => match runnable(&config) {
                    Ok(()) => return config,
                    Err(problem) => problem,
                },
                Err(e @ (ConfigFetchError::NotFound { .. } | ConfigFetchError::Invalid { .. })) => {
                    e.to_string()
                }
                Err(ConfigFetchError::Etcd(e)) => format!("cannot read the network config: {e}"),
            };
            if problem != last_error || last_logged.elapsed() >= Duration::from_secs(30) {
                error!("{problem}; retrying");
                last_logged = Instant::now();
            }
            report(&problem);
            last_error = problem;
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// Acquires a lease, retrying on every error: etcd outages, conflicts and exhaustion
    /// (1 s doubling to 30 s).
    pub async fn acquire_retrying(
        &self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: Option<SubnetKey>,
    ) -> Lease {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            match self.acquire_lease(config, attrs, previous).await {
                Ok(lease) => return lease,
                Err(e) => {
                    let delay = backoff.next_delay();
                    match e {
                        AcquireError::OutOfSubnets(_) => error!(
                            "cannot lease a subnet: {e}; free a lease or enlarge the network; \
                             retrying in {delay:?}"
                        ),
                        _ => warn!("cannot lease a subnet: {e}; retrying in {delay:?}"),
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
