//! Targeted passes end to end, on a 2-node vxlan cluster in network namespaces with a
//! real etcd and a 2 s reconcile timer: peers added, changed and removed through etcd
//! are programmed by targeted passes (no full pass triggered by them), after which the
//! timer's full passes find nothing to change; an entry deleted by hand is put back by
//! a targeted pass, counted as exactly one drift repair, with no full pass triggered
//! (a hand-deleted nexthop object too, whose route the kernel deletes silently).

mod support;

use support::cluster::{CONFIG_KEY, Cluster};
use support::kernel_state::{fdb_entries, neighbours, peer_routes};
use support::netns::Netns;
use support::prometheus::{Scrape, scrape};
use support::vxlan::{LIMIT, VXLAN_CONFIG};
use support::wait_for;

const SUBNETS: &str = "/coreos.com/network/subnets/";

/// A fake peer's lease: subnet 10.244.<n>.0/24 behind 198.19.0.<n>, MAC 0a:58:00:00:01:<n>.
fn fake_peer(n: u8, mac_tail: u8) -> (String, String) {
    (
        format!("{SUBNETS}10.244.{n}.0-24"),
        format!(
            r#"{{"PublicIP":"198.19.0.{n}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0a:58:00:00:{mac_tail:02x}:{n:02x}"}}}}"#
        ),
    )
}

fn changes(m: &Scrape) -> f64 {
    m.sum("weft_datapath_changes_total", &[])
}

fn passes(m: &Scrape, trigger: &str) -> f64 {
    m.value("weft_reconcile_passes_total", &[("trigger", trigger)])
}

fn repairs(m: &Scrape, kind: &str) -> f64 {
    m.value(
        "weft_datapath_changes_total",
        &[("kind", kind), ("cause", "drift_repair")],
    )
}

/// Waits for two more timer passes and returns the scrape after them.
fn two_timer_passes(ns: &Netns) -> Scrape {
    let start = passes(&scrape(ns), "timer");
    wait_for("two timer passes", LIMIT, || {
        let m = scrape(ns);
        (passes(&m, "timer") >= start + 2.0).then_some(m)
    })
}

/// Everything weft programmed has settled: the timer's full passes change nothing.
fn assert_full_passes_change_nothing(ns: &Netns) -> Scrape {
    let settled = two_timer_passes(ns);
    let later = two_timer_passes(ns);
    assert_eq!(
        changes(&later),
        changes(&settled),
        "a full pass changed something"
    );
    assert_eq!(later.sum("weft_datapath_change_failures_total", &[]), 0.0);
    later
}

#[test]
fn targeted_passes_program_peers_and_repair_entries_without_full_passes() {
    let mut c = Cluster::new(2, true);
    c.etcd.etcdctl(&["put", CONFIG_KEY, VXLAN_CONFIG]);
    for host in 0..2 {
        c.start(host, &["--reconcile-interval=2"]);
    }
    for host in 0..2 {
        c.nodes[host].wait_log("weftd is ready", LIMIT);
    }
    let ns = &c.underlay.hosts[0].ns;
    wait_for("the real peer", LIMIT, || {
        (peer_routes(ns).len() == 1).then_some(())
    });
    let taken: Vec<String> = c.subnets_in_etcd().into_iter().map(|(k, _)| k).collect();
    let fakes: Vec<u8> = (100..=250)
        .filter(|n| {
            !taken
                .iter()
                .any(|k| k.ends_with(&format!("10.244.{n}.0-24")))
        })
        .take(12)
        .collect();
    let before = assert_full_passes_change_nothing(ns);

    // 12 peers join, one changes its MAC, two leave and one of them comes back.
    for &n in &fakes {
        let (key, value) = fake_peer(n, 1);
        c.etcd.etcdctl(&["put", &key, &value]);
    }
    let (key, value) = fake_peer(fakes[0], 2);
    c.etcd.etcdctl(&["put", &key, &value]);
    for &n in &fakes[1..3] {
        c.etcd.etcdctl(&["del", &fake_peer(n, 1).0]);
    }
    let (key, value) = fake_peer(fakes[1], 1);
    c.etcd.etcdctl(&["put", &key, &value]);
    let want = 1 + fakes.len() - 1;
    wait_for("the peers programmed", LIMIT, || {
        (peer_routes(ns).len() == want && fdb_entries(ns).len() == want).then_some(())
    });
    let changed_mac = format!("0a:58:00:00:02:{:02x}", fakes[0]);
    assert!(fdb_entries(ns).iter().any(|(mac, _)| *mac == changed_mac));
    let gone = format!("10.244.{}.0/24", fakes[2]);
    assert!(!peer_routes(ns).iter().any(|r| r.0 == gone));
    let after = assert_full_passes_change_nothing(ns);
    assert!(passes(&after, "lease_change") > passes(&before, "lease_change"));
    assert_eq!(
        passes(&after, "kernel_event"),
        passes(&before, "kernel_event"),
        "weft's own changes start no full pass"
    );
    assert_eq!(
        after.sum("weft_datapath_changes_total", &[("cause", "drift_repair")]),
        0.0
    );
    assert!(changes(&after) > changes(&before));

    // Peer routes go through nexthop objects, numbered by subnet in 10.244.0.0/16.
    let peer = fakes[3];
    let nexthop_id = 0x1000_0000 + u32::from(peer);
    let nhid = |ns: &Netns| {
        let route = ns.ip(&["-j", "route", "show", &format!("10.244.{peer}.0/24")]);
        serde_json::from_str::<serde_json::Value>(&route).unwrap()[0]["nhid"].as_u64()
    };
    assert_eq!(nhid(ns), Some(u64::from(nexthop_id)));

    // A route, a neighbour, an FDB entry and a nexthop object (which takes its route
    // with it, silently) deleted by hand: each repaired alone.
    let faults: [(&str, Vec<String>); 4] = [
        (
            "route",
            vec![
                "ip".into(),
                "route".into(),
                "del".into(),
                format!("10.244.{peer}.0/24"),
            ],
        ),
        (
            "neighbour",
            vec![
                "ip".into(),
                "neigh".into(),
                "del".into(),
                format!("10.244.{peer}.0"),
                "dev".into(),
                "flannel.1".into(),
            ],
        ),
        (
            "fdb",
            vec![
                "bridge".into(),
                "fdb".into(),
                "del".into(),
                format!("0a:58:00:00:01:{peer:02x}"),
                "dev".into(),
                "flannel.1".into(),
                "dst".into(),
                format!("198.19.0.{peer}"),
            ],
        ),
        (
            "route",
            vec![
                "ip".into(),
                "nexthop".into(),
                "del".into(),
                "id".into(),
                nexthop_id.to_string(),
            ],
        ),
    ];
    for (kind, command) in faults {
        let before = scrape(ns);
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let out = ns.exec(&args);
        assert!(
            out.status.success(),
            "{kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = wait_for("the repair in the metrics", LIMIT, || {
            let m = scrape(ns);
            (repairs(&m, kind) > repairs(&before, kind)).then_some(m)
        });
        assert_eq!(repairs(&m, kind) - repairs(&before, kind), 1.0, "{kind}");
        assert_eq!(
            m.sum("weft_datapath_changes_total", &[("cause", "drift_repair")])
                - before.sum("weft_datapath_changes_total", &[("cause", "drift_repair")]),
            1.0,
            "only the {kind}"
        );
        assert!(passes(&m, "entry_repair") > passes(&before, "entry_repair"));
        assert_eq!(
            passes(&m, "kernel_event"),
            passes(&before, "kernel_event"),
            "{kind}"
        );
    }
    assert_eq!(peer_routes(ns).len(), want);
    assert_eq!(neighbours(ns).len(), want);
    assert_eq!(fdb_entries(ns).len(), want);
    assert_eq!(
        nhid(ns),
        Some(u64::from(nexthop_id)),
        "back through its object"
    );
    let end = assert_full_passes_change_nothing(ns);
    assert_eq!(
        end.sum("weft_datapath_changes_total", &[("cause", "drift_repair")]),
        4.0
    );
}
