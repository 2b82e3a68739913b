//! net-conf.json: `RawConfig::parse`, then `validate` (etcd mode) and `for_kube`.

use proptest::prelude::*;
use serde_json::{Value, json};
use weft_subnet::config::SubnetPool;
use weft_subnet::{NetworkConfig, RawConfig};
use weft_testkit::{check, json};

/// net-conf.json's fields, and those of the vxlan `Backend` section.
const FIELDS: &[&str] = &[
    "Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "EnableIPv4",
    "EnableIPv6",
    "EnableNFTables",
    "IPv6Network",
    "IPv6SubnetLen",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "Backend",
    "Type",
    "VNI",
    "Port",
    "MTU",
    "GBP",
    "Learning",
    "DirectRouting",
];

fn valid() -> Vec<Value> {
    vec![
        json!({"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}),
        json!({"EnableIPv6":true,"Network":"10.42.0.0/16","IPv6Network":"fc00::/48",
               "SubnetLen":24,"IPv6SubnetLen":64,"SubnetMin":"10.42.1.0",
               "SubnetMax":"10.42.200.0","IPv6SubnetMin":"fc00:0:0:1::",
               "IPv6SubnetMax":"fc00:0:0:ff::","EnableNFTables":false,
               "Backend":{"Type":"vxlan","VNI":4096,"Port":4789,"DirectRouting":true}}),
        json!({"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10::/56",
               "Backend":{"Type":"host-gw"}}),
        json!({"Network":"10.1.0.0/28","SubnetLen":30}),
    ]
}

/// What validation promises about a pool.
fn check_pool(pool: &SubnetPool) -> Result<(), TestCaseError> {
    prop_assert!(pool.subnet_min <= pool.subnet_max, "{pool:?}");
    prop_assert!(pool.network.contains(pool.subnet_min), "{pool:?}");
    prop_assert!(pool.network.contains(pool.subnet_max), "{pool:?}");
    prop_assert!(pool.subnet_len >= pool.network.prefix, "{pool:?}");
    prop_assert!(pool.subnet_count() >= 1, "{pool:?}");
    Ok(())
}

fn check_config(config: &NetworkConfig) -> Result<(), TestCaseError> {
    prop_assert!(config.ipv4.is_some() || config.ipv6.is_some());
    for pool in config.ipv4.iter().chain(&config.ipv6) {
        check_pool(pool)?;
    }
    let _ = config.summary();
    Ok(())
}

#[test]
fn prop_net_conf_parses_validates_or_errs() {
    let tally = check(json::bytes(valid(), FIELDS), |bytes| {
        // The daemon reads the file as UTF-8 text; invalid bytes become U+FFFD here.
        let text = String::from_utf8_lossy(&bytes);
        let parsed = NetworkConfig::parse(&text);
        let raw = match RawConfig::parse(&text) {
            Ok(raw) => raw,
            Err(e) => {
                prop_assert_eq!(parsed, Err(e));
                return Ok("parse error");
            }
        };
        let validated = raw.validate();
        prop_assert_eq!(&parsed, &validated);
        let _ = raw.backend_config();
        if let Ok(config) = raw.for_kube() {
            check_config(&config)?;
        }
        match validated {
            Ok(config) => {
                check_config(&config)?;
                Ok("valid")
            }
            Err(_) => Ok("invalid"),
        }
    });
    tally.assert_seen(&["parse error", "invalid", "valid"]);
}
