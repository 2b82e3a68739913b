//! Subnet allocation: the pure decision behind `AcquireLease`.
//!
//! Given the network config, the current leases, this node's public IP(s) and the subnet
//! remembered in the old subnet.env, [`plan`] says what to do, in flannel's order of
//! preference (sticky allocation):
//! 1. reuse the lease that already carries this node's public IP, if it is compatible
//!    with the config (an incompatible one is to be deleted first);
//! 2. else take the subnet from the previous subnet.env, if it is free and compatible;
//! 3. else pick a random free subnet among the first 100 free ones from `SubnetMin`.
//!
//! The random source is injected so tests are deterministic.

use crate::config::{NetworkConfig, SubnetPool};
use crate::family::{self, Family, Net};
use crate::lease::{Lease, SubnetKey};
use rand::Rng;
use std::net::{Ipv4Addr, Ipv6Addr};

/// flannel picks uniformly among at most this many free subnets.
const MAX_CANDIDATES: usize = 100;

/// Who is asking: the node's public addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimant {
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
}

/// What the datastore edge should do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// A lease with this node's public IP that no longer fits the config: delete it first.
    pub delete: Option<Lease>,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Rewrite this existing lease with fresh attributes.
    Reuse(Box<Lease>),
    /// Create a new key for these subnets (create-if-absent).
    Create {
        key: SubnetKey,
        reason: CreateReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateReason {
    /// The subnet recorded in the previous subnet.env.
    Previous,
    /// A random free subnet.
    Random,
}

/// No subnet is free in a family's pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "out of subnets: all {count} /{subnet_len} subnets from {min} to {max} in {network} are leased"
)]
pub struct OutOfSubnets {
    pub network: Net,
    pub subnet_len: u8,
    pub count: u128,
    pub min: std::net::IpAddr,
    pub max: std::net::IpAddr,
}

impl OutOfSubnets {
    fn of(pool: &SubnetPool) -> OutOfSubnets {
        OutOfSubnets {
            network: pool.network,
            subnet_len: pool.subnet_len,
            count: pool.subnet_count(),
            min: family::from_u128(pool.family(), pool.subnet_min),
            max: family::from_u128(pool.family(), pool.subnet_max),
        }
    }
}

/// Whether a lease's subnets fit the config exactly (flannel's `isSubnetCompatible`).
pub fn is_compatible(config: &NetworkConfig, key: &SubnetKey) -> bool {
    let fits = |pool: &Option<SubnetPool>, net: &Option<Net>| match (pool, net) {
        (Some(pool), Some(net)) => pool.admits(net),
        (None, None) => true,
        _ => false,
    };
    fits(&config.ipv4, &key.ipv4) && fits(&config.ipv6, &key.ipv6)
}

/// Decides how to acquire a lease. `previous` is the subnet pair from the old subnet.env.
pub fn plan(
    config: &NetworkConfig,
    leases: &[Lease],
    claimant: &Claimant,
    previous: Option<SubnetKey>,
    rng: &mut impl Rng,
) -> Result<Plan, OutOfSubnets> {
    let mut delete = None;
    if let Some(own) = leases.iter().find(|l| claims(l, claimant)) {
        if is_compatible(config, &own.key) {
            return Ok(Plan {
                delete: None,
                action: Action::Reuse(Box::new(own.clone())),
            });
        }
        delete = Some(own.clone());
    }
    let others: Vec<&Lease> = leases
        .iter()
        .filter(|l| Some(&l.key) != delete.as_ref().map(|d| &d.key))
        .collect();
    if let Some(previous) = previous {
        let taken = others.iter().any(|l| overlaps(&l.key, &previous));
        if !taken && is_compatible(config, &previous) {
            return Ok(Plan {
                delete,
                action: Action::Create {
                    key: previous,
                    reason: CreateReason::Previous,
                },
            });
        }
    }
    let mut key = SubnetKey {
        ipv4: None,
        ipv6: None,
    };
    if let Some(pool) = &config.ipv4 {
        key.ipv4 =
            Some(pick(pool, &others, Family::V4, rng).ok_or_else(|| OutOfSubnets::of(pool))?);
    }
    if let Some(pool) = &config.ipv6 {
        key.ipv6 =
            Some(pick(pool, &others, Family::V6, rng).ok_or_else(|| OutOfSubnets::of(pool))?);
    }
    Ok(Plan {
        delete,
        action: Action::Create {
            key,
            reason: CreateReason::Random,
        },
    })
}

/// Whether a lease was made by this node: its public IP matches (v4 when the node has
/// one, v6 for IPv6-only nodes).
fn claims(lease: &Lease, claimant: &Claimant) -> bool {
    match (claimant.public_ip, claimant.public_ipv6) {
        (Some(ip), _) => lease.attrs.public_ip == ip,
        (None, Some(ip6)) => lease.attrs.public_ipv6 == Some(ip6),
        (None, None) => false,
    }
}

fn overlaps(a: &SubnetKey, b: &SubnetKey) -> bool {
    let hit =
        |x: &Option<Net>, y: &Option<Net>| matches!((x, y), (Some(x), Some(y)) if x.overlaps(y));
    hit(&a.ipv4, &b.ipv4) || hit(&a.ipv6, &b.ipv6)
}

/// Picks a random subnet among the first [`MAX_CANDIDATES`] free ones from `subnet_min`.
fn pick(pool: &SubnetPool, leases: &[&Lease], family: Family, rng: &mut impl Rng) -> Option<Net> {
    // Taken ranges sorted by start, so each candidate is checked by binary search and the
    // walk skips over taken runs instead of testing every lease against every subnet.
    let mut taken: Vec<(u128, u128)> = leases
        .iter()
        .filter_map(|l| match family {
            Family::V4 => l.key.ipv4,
            Family::V6 => l.key.ipv6,
        })
        .map(|n| (n.addr, n.last()))
        .collect();
    taken.sort_unstable();
    let step = family::block(family, pool.subnet_len);
    let mut candidates = Vec::with_capacity(MAX_CANDIDATES);
    let mut addr = pool.subnet_min;
    loop {
        let end = addr + (step - 1);
        // The first taken range that ends at or after `addr` is the only one that can overlap.
        let index = taken.partition_point(|(_, last)| *last < addr);
        match taken.get(index) {
            Some((start, last)) if *start <= end => {
                // Jump to the first subnet boundary after the overlapping range.
                let next = last.checked_add(1).map(|n| n.div_ceil(step) * step);
                match next {
                    Some(next) if next > addr => addr = next,
                    _ => break,
                }
                if addr > pool.subnet_max {
                    break;
                }
                continue;
            }
            _ => candidates.push(addr),
        }
        if candidates.len() == MAX_CANDIDATES || addr >= pool.subnet_max {
            break;
        }
        addr += step;
    }
    if candidates.is_empty() {
        return None;
    }
    let chosen = candidates[rng.random_range(0..candidates.len())];
    Some(Net {
        family,
        addr: chosen,
        prefix: pool.subnet_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::HashSet;

    fn config(text: &str) -> NetworkConfig {
        NetworkConfig::parse(text).unwrap()
    }

    fn lease(key: &str, public_ip: &str) -> Lease {
        Lease {
            key: SubnetKey::parse(key).unwrap(),
            attrs: LeaseAttrs {
                public_ip: public_ip.parse().unwrap(),
                ..LeaseAttrs::default()
            },
            etcd_lease: 7,
            expiration: None,
            revision: 1,
        }
    }

    fn me(ip: &str) -> Claimant {
        Claimant {
            public_ip: Some(ip.parse().unwrap()),
            public_ipv6: None,
        }
    }

    #[test]
    fn reuses_own_lease_by_public_ip() {
        let cfg = config(r#"{"Network":"10.244.0.0/16"}"#);
        let leases = [
            lease("10.244.7.0-24", "198.18.0.2"),
            lease("10.244.9.0-24", "198.18.0.1"),
        ];
        let plan = plan(
            &cfg,
            &leases,
            &me("198.18.0.1"),
            None,
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap();
        assert_eq!(
            plan,
            Plan {
                delete: None,
                action: Action::Reuse(Box::new(leases[1].clone()))
            }
        );
    }

    #[test]
    fn incompatible_own_lease_is_deleted_then_previous_subnet_taken() {
        let cfg = config(r#"{"Network":"10.244.0.0/16","SubnetLen":25}"#);
        let leases = [lease("10.244.9.0-24", "198.18.0.1")];
        let previous = SubnetKey::parse("10.244.9.128-25").ok();
        let plan = plan(
            &cfg,
            &leases,
            &me("198.18.0.1"),
            previous,
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap();
        assert_eq!(plan.delete, Some(leases[0].clone()));
        assert_eq!(
            plan.action,
            Action::Create {
                key: previous.unwrap(),
                reason: CreateReason::Previous
            }
        );
    }

    #[test]
    fn previous_subnet_ignored_when_taken_or_incompatible() {
        let cfg = config(r#"{"Network":"10.244.0.0/16"}"#);
        let leases = [lease("10.244.9.0-24", "198.18.0.2")];
        let mut rng = StdRng::seed_from_u64(3);
        for previous in [
            "10.244.9.0-24",
            "10.244.0.0-24",
            "10.99.0.0-24",
            "10.244.5.0-25",
        ] {
            let plan = plan(
                &cfg,
                &leases,
                &me("198.18.0.1"),
                SubnetKey::parse(previous).ok(),
                &mut rng,
            )
            .unwrap();
            let Action::Create { key, reason } = plan.action else {
                panic!("expected create")
            };
            assert_eq!(reason, CreateReason::Random, "{previous}");
            assert_ne!(key.to_string(), "10.244.9.0-24");
        }
    }

    #[test]
    fn random_allocation_never_overlaps_and_exhausts_cleanly() {
        // 10.5.0.0/24 in /28s: 16 subnets, minus the first and the last = 14... the last is
        // allocatable (SubnetMax is the last subnet), so 15.
        let cfg = config(r#"{"Network":"10.5.0.0/24","SubnetLen":28}"#);
        let mut leases: Vec<Lease> = Vec::new();
        let mut rng = StdRng::seed_from_u64(42);
        let mut seen = HashSet::new();
        for i in 0..15 {
            let plan = plan(&cfg, &leases, &me(&format!("198.18.1.{i}")), None, &mut rng).unwrap();
            let Action::Create { key, .. } = plan.action else {
                panic!("expected create")
            };
            assert!(is_compatible(&cfg, &key));
            assert!(seen.insert(key), "duplicate {key}");
            leases.push(lease(&key.to_string(), &format!("198.18.1.{i}")));
        }
        let err = plan(&cfg, &leases, &me("198.18.2.1"), None, &mut rng).unwrap_err();
        assert_eq!(
            err.to_string(),
            "out of subnets: all 15 /28 subnets from 10.5.0.16 to 10.5.0.240 in 10.5.0.0/24 are leased"
        );
    }

    #[test]
    fn foreign_wider_lease_blocks_every_overlapping_subnet() {
        let cfg = config(r#"{"Network":"10.5.0.0/24","SubnetLen":28}"#);
        // A /25 written by someone else covers 10.5.0.0-127; only 10.5.0.128.. remain.
        let leases = [lease("10.5.0.0-25", "198.18.0.9")];
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..50 {
            let plan = plan(&cfg, &leases, &me("198.18.0.1"), None, &mut rng).unwrap();
            let Action::Create { key, .. } = plan.action else {
                panic!()
            };
            assert!(key.ipv4.unwrap().addr >= family::to_u128("10.5.0.128".parse().unwrap()));
        }
    }

    #[test]
    fn candidates_are_limited_to_the_first_hundred_free() {
        let cfg = config(r#"{"Network":"10.0.0.0/8","SubnetLen":24}"#);
        let mut rng = StdRng::seed_from_u64(9);
        let limit = family::to_u128("10.0.101.0".parse().unwrap());
        for _ in 0..200 {
            let plan = plan(&cfg, &[], &me("198.18.0.1"), None, &mut rng).unwrap();
            let Action::Create { key, .. } = plan.action else {
                panic!()
            };
            assert!(key.ipv4.unwrap().addr < limit);
        }
    }

    #[test]
    fn dual_stack_allocates_both_families() {
        let cfg =
            config(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#);
        let plan = plan(
            &cfg,
            &[],
            &me("198.18.0.1"),
            None,
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap();
        let Action::Create { key, .. } = plan.action else {
            panic!()
        };
        assert!(key.ipv4.is_some() && key.ipv6.is_some());
        assert!(is_compatible(&cfg, &key));
        // A v4-only lease is not compatible with a dual-stack network.
        assert!(!is_compatible(&cfg, &SubnetKey { ipv6: None, ..key }));
    }
}
