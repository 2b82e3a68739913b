//! The etcd subnet manager against a real etcd (Debian's etcd-server): acquisition,
//! renewal, reservations, watches, compaction, flannel wire compatibility, concurrency
//! and bad input.

mod support;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use std::collections::HashSet;
use std::time::Duration;
use support::etcd::EtcdServer;
use tokio::sync::mpsc;
use weft_subnet::etcd::{
    AcquireError, ConfigFetchError, EtcdOptions, EtcdSubnetManager, RenewOutcome,
};
use weft_subnet::watch::{DatastoreEvent, WatchBatch};
use weft_subnet::{LeaseAttrs, NetworkConfig, SubnetKey};

const PREFIX: &str = "/coreos.com/network";
const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

async fn manager_with_ttl(etcd: &EtcdServer, ttl: Duration) -> EtcdSubnetManager {
    let mut options = EtcdOptions::new(vec![etcd.endpoint()]);
    options.lease_ttl = ttl;
    EtcdSubnetManager::connect(&options).await.expect("connect")
}

async fn manager(etcd: &EtcdServer) -> EtcdSubnetManager {
    manager_with_ttl(etcd, Duration::from_secs(86_400)).await
}

fn vxlan_attrs(public_ip: &str, mac: &str) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: public_ip.parse().unwrap(),
        public_ipv6: None,
        backend_type: "vxlan".into(),
        backend_data: Some(serde_json::json!({"VNI": 1, "VtepMAC": mac}).into()),
        backend_v6_data: None,
    }
}

async fn put(etcd: &EtcdServer, key: &str, value: &str) {
    etcd.client().await.put(key, value, None).await.unwrap();
}

async fn get(etcd: &EtcdServer, key: &str) -> Option<(String, i64)> {
    let response = etcd.client().await.get(key, None).await.unwrap();
    response
        .kvs()
        .first()
        .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease()))
}

async fn config(etcd: &EtcdServer, text: &str) -> NetworkConfig {
    put(etcd, &format!("{PREFIX}/config"), text).await;
    NetworkConfig::parse(text).unwrap()
}

#[tokio::test]
async fn acquire_writes_flannels_exact_format_with_a_24h_lease() {
    let etcd = EtcdServer::start();
    let cfg = config(&etcd, CONFIG).await;
    let m = manager(&etcd).await;
    assert_eq!(m.network_config().await.unwrap(), cfg);
    let lease = m
        .acquire_lease(&cfg, &vxlan_attrs("198.18.0.11", "0a:58:0a:f4:01:00"), None)
        .await
        .unwrap();
    let key = format!("{PREFIX}/subnets/{}", lease.key);
    let (value, etcd_lease) = get(&etcd, &key).await.expect("lease key written");
    assert_eq!(
        value,
        r#"{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}}"#
    );
    assert_eq!(etcd_lease, lease.etcd_lease);
    let ttl = etcd
        .client()
        .await
        .lease_time_to_live(etcd_lease, None)
        .await
        .unwrap();
    assert!(
        (86_390..=86_400).contains(&ttl.granted_ttl()),
        "granted TTL {}",
        ttl.granted_ttl()
    );
    // The key is flannel's format: "<a.b.c.d>-<len>" inside [SubnetMin, SubnetMax].
    let v4 = lease.key.ipv4.unwrap();
    assert_eq!(v4.prefix, 24);
    assert!(
        lease.key.to_string().starts_with("10.244.") && lease.key.to_string().ends_with(".0-24")
    );
    assert_ne!(lease.key.to_string(), "10.244.0.0-24");
}

#[tokio::test]
async fn restart_keeps_the_same_subnet_and_previous_subnet_env_is_honoured() {
    let etcd = EtcdServer::start();
    let cfg = config(&etcd, CONFIG).await;
    let attrs = vxlan_attrs("198.18.0.11", "0a:58:0a:f4:01:00");
    let first = manager(&etcd)
        .await
        .acquire_lease(&cfg, &attrs, None)
        .await
        .unwrap();
    // A "restarted" node (new client) with the same public IP gets the same key back,
    // with a fresh etcd lease; the previous etcd lease is revoked.
    let second = manager(&etcd)
        .await
        .acquire_lease(&cfg, &attrs, None)
        .await
        .unwrap();
    assert_eq!(second.key, first.key);
    assert_ne!(second.etcd_lease, first.etcd_lease);
    let old = etcd
        .client()
        .await
        .lease_time_to_live(first.etcd_lease, None)
        .await
        .unwrap();
    assert_eq!(old.ttl(), -1, "the replaced etcd lease is revoked");
    // The lease is gone from etcd (expired while the node was down): the subnet from the
    // old subnet.env is taken again.
    etcd.client()
        .await
        .delete(format!("{PREFIX}/subnets/{}", first.key), None)
        .await
        .unwrap();
    let previous = SubnetKey::parse("10.244.77.0-24").unwrap();
    let third = manager(&etcd)
        .await
        .acquire_lease(
            &cfg,
            &vxlan_attrs("198.18.0.99", "0a:58:0a:f4:63:00"),
            Some(previous),
        )
        .await
        .unwrap();
    assert_eq!(third.key, previous);
}

#[tokio::test]
async fn leases_written_by_flannel_are_read_and_non_subnet_keys_are_skipped() {
    let etcd = EtcdServer::start();
    config(
        &etcd,
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#,
    )
    .await;
    // Exactly what flanneld writes (reference: Documentation/reservations.md).
    put(&etcd, &format!("{PREFIX}/subnets/10.244.5.0-24"),
        r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#).await;
    put(&etcd, &format!("{PREFIX}/subnets/10.244.6.0-24&fc00:0:0:6::-64"),
        r#"{"PublicIP":"192.168.64.4","PublicIPv6":"fd00::4","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:46"}}"#).await;
    put(
        &etcd,
        &format!("{PREFIX}/subnets/not-a-subnet"),
        r#"{"PublicIP":"1.2.3.4"}"#,
    )
    .await;
    put(
        &etcd,
        &format!("{PREFIX}/subnets/10.244.9.0-24"),
        "{this is not json",
    )
    .await;
    let (leases, revision) = manager(&etcd).await.list_leases().await.unwrap();
    assert!(revision > 0);
    let keys: Vec<String> = leases.iter().map(|l| l.key.to_string()).collect();
    assert_eq!(keys, ["10.244.5.0-24", "10.244.6.0-24&fc00:0:0:6::-64"]);
    assert_eq!(leases[0].attrs.backend_type, "vxlan");
    assert_eq!(leases[0].attrs.public_ip.to_string(), "192.168.64.3");
    assert_eq!(leases[1].attrs.public_ipv6.unwrap().to_string(), "fd00::4");
    // Byte compatibility: re-encoding gives back what flannel wrote.
    let raw = get(
        &etcd,
        &format!("{PREFIX}/subnets/10.244.6.0-24&fc00:0:0:6::-64"),
    )
    .await
    .unwrap()
    .0;
    assert_eq!(leases[1].attrs.to_json(), raw);
}

#[tokio::test]
async fn reservation_is_reused_and_never_gets_a_ttl() {
    let etcd = EtcdServer::start();
    let cfg = config(&etcd, CONFIG).await;
    // A reservation: a key with no etcd lease, pinned to this node's public IP.
    let key = format!("{PREFIX}/subnets/10.244.42.0-24");
    put(
        &etcd,
        &key,
        r#"{"PublicIP":"198.18.0.11","PublicIPv6":null}"#,
    )
    .await;
    let m = manager(&etcd).await;
    let lease = m
        .acquire_lease(&cfg, &vxlan_attrs("198.18.0.11", "0a:58:0a:f4:2a:00"), None)
        .await
        .unwrap();
    assert_eq!(lease.key.to_string(), "10.244.42.0-24");
    assert!(lease.is_reservation());
    let (value, etcd_lease) = get(&etcd, &key).await.unwrap();
    assert_eq!(etcd_lease, 0, "a reservation must stay without TTL");
    assert!(
        value.contains("0a:58:0a:f4:2a:00"),
        "attributes are updated: {value}"
    );
    let RenewOutcome::Renewed(renewed) = m.renew_lease(&lease).await.unwrap() else {
        panic!("renew failed")
    };
    assert!(renewed.is_reservation());
    assert_eq!(get(&etcd, &key).await.unwrap().1, 0);
}

#[tokio::test]
async fn renewal_extends_the_lease_beyond_its_ttl() {
    let etcd = EtcdServer::start();
    let cfg = config(&etcd, CONFIG).await;
    let m = manager_with_ttl(&etcd, Duration::from_secs(3)).await;
    let mut lease = m
        .acquire_lease(&cfg, &vxlan_attrs("198.18.0.11", "0a:58:0a:f4:01:00"), None)
        .await
        .unwrap();
    let key = format!("{PREFIX}/subnets/{}", lease.key);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let RenewOutcome::Renewed(next) = m.renew_lease(&lease).await.unwrap() else {
            panic!("lost")
        };
        assert_ne!(next.etcd_lease, lease.etcd_lease);
        lease = next;
    }
    // 4.5 s after acquisition, longer than the 3 s TTL: still there.
    assert!(get(&etcd, &key).await.is_some());
    // Without renewal it expires.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(get(&etcd, &key).await.is_none());
    // Renewing a lost lease says so instead of resurrecting it blindly.
    assert_eq!(
        m.renew_lease(&lease).await.unwrap(),
        RenewOutcome::Lost { current: None }
    );
}

#[tokio::test]
async fn renewal_does_not_overwrite_a_subnet_taken_by_another_node() {
    let etcd = EtcdServer::start();
    let cfg = config(&etcd, CONFIG).await;
    let m = manager(&etcd).await;
    let lease = m
        .acquire_lease(&cfg, &vxlan_attrs("198.18.0.11", "0a:58:0a:f4:01:00"), None)
        .await
        .unwrap();
    let key = format!("{PREFIX}/subnets/{}", lease.key);
    let intruder = r#"{"PublicIP":"198.18.0.99","PublicIPv6":null}"#;
    put(&etcd, &key, intruder).await;
    let RenewOutcome::Lost {
        current: Some(current),
    } = m.renew_lease(&lease).await.unwrap()
    else {
        panic!("expected Lost with the current value")
    };
    assert_eq!(current.attrs.public_ip.to_string(), "198.18.0.99");
    assert_eq!(get(&etcd, &key).await.unwrap().0, intruder);
}

async fn next_batch(rx: &mut mpsc::Receiver<WatchBatch>) -> WatchBatch {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no watch batch within 10 s")
        .expect("watch ended")
}

/// Puts flannel's lease value for a peer without IPv6 at `subnet` ("10.244.9.0-24").
async fn put_peer(etcd: &EtcdServer, subnet: &str, public_ip: &str) {
    put(
        etcd,
        &format!("{PREFIX}/subnets/{subnet}"),
        &format!(r#"{{"PublicIP":"{public_ip}","PublicIPv6":null}}"#),
    )
    .await;
}

/// Puts a peer lease for `subnet` ("10.244.9.0-24") and expects the watch to deliver it
/// as exactly one event: the watch goes on after whatever the test did to it.
async fn expect_watch_continues(
    etcd: &EtcdServer,
    rx: &mut mpsc::Receiver<WatchBatch>,
    subnet: &str,
    public_ip: &str,
) {
    put_peer(etcd, subnet, public_ip).await;
    let WatchBatch::Events(events) = next_batch(rx).await else {
        panic!("expected the put of {subnet} as an event")
    };
    assert!(
        matches!(events.as_slice(), [DatastoreEvent::Put(l)] if l.key.to_string() == subnet),
        "{events:?}"
    );
}

#[tokio::test]
async fn watch_delivers_snapshot_added_removed_and_expired() {
    let etcd = EtcdServer::start();
    config(&etcd, CONFIG).await;
    put_peer(&etcd, "10.244.1.0-24", "198.18.0.11").await;
    let (mut rx, task) = watch_all(&etcd).await;
    let WatchBatch::Snapshot(snapshot) = next_batch(&mut rx).await else {
        panic!("snapshot first")
    };
    assert_eq!(snapshot.len(), 1);

    // Added (a malformed value and a foreign key in between are skipped).
    put(&etcd, &format!("{PREFIX}/subnets/10.244.3.0-24"), "garbage").await;
    put(
        &etcd,
        &format!("{PREFIX}/subnets/zzz"),
        r#"{"PublicIP":"1.1.1.1"}"#,
    )
    .await;
    put_peer(&etcd, "10.244.2.0-24", "198.18.0.12").await;
    let WatchBatch::Events(events) = next_batch(&mut rx).await else {
        panic!("events")
    };
    let [DatastoreEvent::Put(added)] = events.as_slice() else {
        panic!("one put: {events:?}")
    };
    assert_eq!(
        (added.key.to_string(), added.attrs.public_ip.to_string()),
        ("10.244.2.0-24".into(), "198.18.0.12".into())
    );

    // Removed, with the previous value.
    etcd.client()
        .await
        .delete(format!("{PREFIX}/subnets/10.244.2.0-24"), None)
        .await
        .unwrap();
    let WatchBatch::Events(events) = next_batch(&mut rx).await else {
        panic!("events")
    };
    let [
        DatastoreEvent::Delete {
            key,
            previous: Some(previous),
        },
    ] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert_eq!(key.to_string(), "10.244.2.0-24");
    assert_eq!(previous.attrs.public_ip.to_string(), "198.18.0.12");

    // Expired: a key on a 2 s etcd lease disappears by itself and is reported.
    let mut client = etcd.client().await;
    let grant = client.lease_grant(2, None).await.unwrap().id();
    client
        .put(
            format!("{PREFIX}/subnets/10.244.4.0-24"),
            r#"{"PublicIP":"198.18.0.14","PublicIPv6":null}"#,
            Some(PutOptions::new().with_lease(grant)),
        )
        .await
        .unwrap();
    let WatchBatch::Events(events) = next_batch(&mut rx).await else {
        panic!("events")
    };
    assert!(matches!(events.as_slice(), [DatastoreEvent::Put(_)]));
    let WatchBatch::Events(events) = next_batch(&mut rx).await else {
        panic!("events")
    };
    let [DatastoreEvent::Delete { key, .. }] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(key.to_string(), "10.244.4.0-24");
    task.abort();
}

#[tokio::test]
async fn watch_from_a_compacted_revision_relists() {
    let etcd = EtcdServer::start();
    config(&etcd, CONFIG).await;
    let m = std::sync::Arc::new(manager(&etcd).await);
    let (_, start) = m.list_leases().await.unwrap();
    for i in 1..=3 {
        put_peer(&etcd, &format!("10.244.{i}.0-24"), "198.18.0.11").await;
    }
    let mut client = etcd.client().await;
    let current = client
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(current, None).await.unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let watcher = m.clone();
    let task = tokio::spawn(async move { watcher.watch_leases_from(Some(start + 1), tx).await });
    let WatchBatch::Snapshot(snapshot) = next_batch(&mut rx).await else {
        panic!("expected a re-list")
    };
    assert_eq!(snapshot.len(), 3);
    // And the watch continues after the re-list.
    expect_watch_continues(&etcd, &mut rx, "10.244.9.0-24", "198.18.0.19").await;
    task.abort();
}

#[tokio::test]
async fn watch_recovers_after_etcd_restarts() {
    let mut etcd = EtcdServer::start();
    config(&etcd, CONFIG).await;
    let (mut rx, task) = watch_all(&etcd).await;
    assert!(matches!(next_batch(&mut rx).await, WatchBatch::Snapshot(_)));
    etcd.restart();
    put_peer(&etcd, "10.244.8.0-24", "198.18.0.18").await;
    let keys: Vec<String> = loop {
        match next_batch(&mut rx).await {
            WatchBatch::Events(events) => {
                break events
                    .iter()
                    .filter_map(|e| match e {
                        DatastoreEvent::Put(l) => Some(l.key.to_string()),
                        _ => None,
                    })
                    .collect();
            }
            WatchBatch::Snapshot(s) if !s.is_empty() => {
                break s.iter().map(|l| l.key.to_string()).collect();
            }
            WatchBatch::Snapshot(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(keys, ["10.244.8.0-24"]);
    task.abort();
}

#[tokio::test]
async fn forty_nodes_racing_for_fifteen_subnets() {
    let etcd = EtcdServer::start();
    // /24 in /28s: SubnetMin skips the first, so 15 subnets for 40 contenders.
    let cfg = config(
        &etcd,
        r#"{"Network":"10.5.0.0/24","SubnetLen":28,"Backend":{"Type":"alloc"}}"#,
    )
    .await;
    let mut managers = Vec::new();
    for _ in 0..40 {
        managers.push(manager(&etcd).await);
    }
    let attempts = managers.iter().enumerate().map(|(i, m)| {
        let attrs = LeaseAttrs {
            public_ip: format!("198.18.1.{}", i + 1).parse().unwrap(),
            ..LeaseAttrs::default()
        };
        let cfg = cfg.clone();
        async move { m.acquire_lease(&cfg, &attrs, None).await }
    });
    let results = futures_join_all(attempts).await;
    let mut subnets = HashSet::new();
    let mut etcd_leases = HashSet::new();
    let mut losers = 0;
    for result in results {
        match result {
            Ok(lease) => {
                assert!(subnets.insert(lease.key), "duplicate subnet {}", lease.key);
                assert!(etcd_leases.insert(lease.etcd_lease));
            }
            Err(AcquireError::OutOfSubnets(e)) => {
                assert_eq!(
                    e.to_string(),
                    "out of subnets: all 15 /28 subnets from 10.5.0.16 to 10.5.0.240 in 10.5.0.0/24 are leased"
                );
                losers += 1;
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!((subnets.len(), losers), (15, 25));
    let stored = etcd
        .client()
        .await
        .get(
            format!("{PREFIX}/subnets/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(stored.kvs().len(), 15);
}

/// A dual-stack key names both subnets, so two nodes that picked the same IPv4 subnet
/// with different IPv6 ones write different keys: one free IPv4 subnet, plenty of IPv6
/// ones, and twenty nodes at once must still give that IPv4 subnet to one node only.
#[tokio::test]
async fn dual_stack_racers_never_share_a_subnet_of_either_family() {
    let etcd = EtcdServer::start();
    let cfg = config(
        &etcd,
        r#"{"Network":"10.5.0.0/24","SubnetLen":28,"SubnetMin":"10.5.0.16","SubnetMax":"10.5.0.16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"alloc"}}"#,
    )
    .await;
    let mut managers = Vec::new();
    for _ in 0..20 {
        managers.push(manager(&etcd).await);
    }
    let attempts = managers.iter().enumerate().map(|(i, m)| {
        let attrs = LeaseAttrs {
            public_ip: format!("198.18.1.{}", i + 1).parse().unwrap(),
            public_ipv6: Some(format!("fd00:198:18::{:x}", i + 1).parse().unwrap()),
            ..LeaseAttrs::default()
        };
        let cfg = cfg.clone();
        async move { m.acquire_lease(&cfg, &attrs, None).await }
    });
    let mut winners = Vec::new();
    for result in futures_join_all(attempts).await {
        match result {
            Ok(lease) => winners.push(lease.key),
            Err(AcquireError::OutOfSubnets(e)) => assert_eq!(
                e.to_string(),
                "out of subnets: all 1 /28 subnets from 10.5.0.16 to 10.5.0.16 in 10.5.0.0/24 are leased"
            ),
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let stored = etcd
        .client()
        .await
        .get(
            format!("{PREFIX}/subnets/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(stored.kvs().len(), 1);
}

/// Runs futures concurrently on this task (no extra dependency needed).
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let handles: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    let mut handles: Vec<Option<_>> = handles.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, out) in handles.iter_mut().zip(outputs.iter_mut()) {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("completed")).collect()
}

#[tokio::test]
async fn bad_config_in_etcd_is_reported_with_the_key() {
    let etcd = EtcdServer::start();
    let m = manager(&etcd).await;
    let err = m.network_config().await.unwrap_err();
    assert!(matches!(err, ConfigFetchError::NotFound { .. }));
    assert_eq!(
        err.to_string(),
        "flannel config not found in etcd store at /coreos.com/network/config. Did you create your config using etcdv3 API?"
    );
    put(
        &etcd,
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#,
    )
    .await;
    assert_eq!(
        m.network_config().await.unwrap_err().to_string(),
        "invalid network config in etcd key /coreos.com/network/config: SubnetLen must be less than /31"
    );
    put(&etcd, &format!("{PREFIX}/config"), "not json").await;
    assert!(m.network_config().await.unwrap_err().to_string().starts_with(
        "invalid network config in etcd key /coreos.com/network/config: net-conf.json is not valid JSON"
    ));
}

#[tokio::test]
async fn incompatible_own_lease_is_replaced() {
    let etcd = EtcdServer::start();
    // The node had a /24 under an old config; the network now uses /25s.
    put_peer(&etcd, "10.244.9.0-24", "198.18.0.11").await;
    let cfg = config(&etcd, r#"{"Network":"10.244.0.0/16","SubnetLen":25}"#).await;
    let lease = manager(&etcd)
        .await
        .acquire_lease(&cfg, &vxlan_attrs("198.18.0.11", "0a:58:0a:f4:01:00"), None)
        .await
        .unwrap();
    assert_eq!(lease.key.ipv4.unwrap().prefix, 25);
    assert!(
        get(&etcd, &format!("{PREFIX}/subnets/10.244.9.0-24"))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_create_race_on_one_subnet_has_one_winner() {
    // Two nodes both believe 10.244.50.0/24 is theirs (same previous subnet.env, e.g. a
    // cloned VM image): exactly one gets it, the other gets another subnet.
    let etcd = EtcdServer::start();
    let cfg = config(&etcd, CONFIG).await;
    let previous = SubnetKey::parse("10.244.50.0-24").ok();
    let (a, b) = (manager(&etcd).await, manager(&etcd).await);
    let attrs_a = vxlan_attrs("198.18.0.11", "0a:58:0a:f4:01:00");
    let attrs_b = vxlan_attrs("198.18.0.12", "0a:58:0a:f4:02:00");
    let (la, lb) = tokio::join!(
        a.acquire_lease(&cfg, &attrs_a, previous),
        b.acquire_lease(&cfg, &attrs_b, previous)
    );
    let (la, lb) = (la.unwrap(), lb.unwrap());
    assert_ne!(la.key, lb.key);
    assert!(la.key == previous.unwrap() || lb.key == previous.unwrap());
    // A guarded transaction is what made this safe: prove etcd agrees.
    let check = Txn::new()
        .when([Compare::version(
            format!("{PREFIX}/subnets/10.244.50.0-24"),
            CompareOp::Equal,
            1,
        )])
        .and_then([TxnOp::get("x", None)]);
    assert!(etcd.client().await.txn(check).await.unwrap().succeeded());
}

/// A manager's lease watch from the start: its batches and its task.
async fn watch_all(etcd: &EtcdServer) -> (mpsc::Receiver<WatchBatch>, tokio::task::JoinHandle<()>) {
    let m = std::sync::Arc::new(manager(etcd).await);
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(async move { m.watch_leases(tx).await });
    (rx, task)
}

/// Waits for the first batch that is not a plain event batch (a reset or a snapshot).
async fn next_non_event(rx: &mut mpsc::Receiver<WatchBatch>) -> WatchBatch {
    for _ in 0..50 {
        match next_batch(rx).await {
            WatchBatch::Events(_) => continue,
            other => return other,
        }
    }
    panic!("only event batches arrived")
}

#[tokio::test]
async fn watch_notices_an_emptied_etcd_and_relists() {
    let mut etcd = EtcdServer::start();
    config(&etcd, CONFIG).await;
    for i in 1..=3 {
        put_peer(&etcd, &format!("10.244.{i}.0-24"), "198.18.0.11").await;
    }
    let (mut rx, task) = watch_all(&etcd).await;
    let WatchBatch::Snapshot(snapshot) = next_batch(&mut rx).await else {
        panic!("snapshot first")
    };
    assert_eq!(snapshot.len(), 3);
    // etcd comes back with an empty data directory at revision 1 (with the same name
    // and URLs it even keeps its cluster ID). Resuming the watch at the old revision
    // would wait forever.
    etcd.restart_empty();
    let WatchBatch::StoreReset(reason) = next_non_event(&mut rx).await else {
        panic!("expected a reset")
    };
    assert_eq!(reason, "etcd's revision went back from 5 to 1");
    let WatchBatch::Snapshot(snapshot) = next_batch(&mut rx).await else {
        panic!("a fresh listing follows the reset")
    };
    assert!(snapshot.is_empty(), "{snapshot:?}");
    // New leases are seen again.
    expect_watch_continues(&etcd, &mut rx, "10.244.7.0-24", "198.18.0.17").await;
    task.abort();
}

#[tokio::test]
async fn watch_notices_a_restored_snapshot_and_relists() {
    let mut etcd = EtcdServer::start();
    config(&etcd, CONFIG).await;
    put_peer(&etcd, "10.244.1.0-24", "198.18.0.11").await;
    let backup = tempfile::tempdir().unwrap();
    let snapshot_file = backup.path().join("backup.db");
    etcd.snapshot_save(&snapshot_file);
    // Written after the backup: lost when it is restored.
    for i in 2..=4 {
        put_peer(&etcd, &format!("10.244.{i}.0-24"), "198.18.0.12").await;
    }
    let (mut rx, task) = watch_all(&etcd).await;
    let WatchBatch::Snapshot(snapshot) = next_batch(&mut rx).await else {
        panic!("snapshot first")
    };
    assert_eq!(snapshot.len(), 4);
    etcd.restore_from(&snapshot_file);
    let WatchBatch::StoreReset(reason) = next_non_event(&mut rx).await else {
        panic!("expected a reset")
    };
    assert!(reason.starts_with("etcd's"), "{reason}");
    let WatchBatch::Snapshot(snapshot) = next_batch(&mut rx).await else {
        panic!("a fresh listing follows the reset")
    };
    let keys: Vec<String> = snapshot.iter().map(|l| l.key.to_string()).collect();
    assert_eq!(keys, ["10.244.1.0-24"]);
    expect_watch_continues(&etcd, &mut rx, "10.244.9.0-24", "198.18.0.19").await;
    task.abort();
}

#[tokio::test]
async fn watch_reports_config_writes() {
    let etcd = EtcdServer::start();
    config(&etcd, CONFIG).await;
    let (mut rx, task) = watch_all(&etcd).await;
    assert!(matches!(next_batch(&mut rx).await, WatchBatch::Snapshot(_)));
    let changed = r#"{"Network":"10.99.0.0/16","Backend":{"Type":"vxlan"}}"#;
    put(&etcd, &format!("{PREFIX}/config"), changed).await;
    assert_eq!(
        next_batch(&mut rx).await,
        WatchBatch::Config(Some(changed.to_string()))
    );
    task.abort();
}
