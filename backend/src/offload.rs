//! The VXLAN device's TX checksum offload (`tx-checksum-ip-generic`), decided on facts.
//!
//! flannel's most repeated datapath complaint (flannel#1279, #2152): with the offload on,
//! some kernels send VXLAN packets with a wrong outer UDP checksum once the encapsulated
//! packet is NAT-ed (kube-proxy's masquerade, `--random-fully`), so Service traffic
//! between nodes stalls (the "63 second delay", kubernetes#88986); the fix users are told
//! is `ethtool -K flannel.1 tx-checksum-ip-generic off`. The kernel bug: `udp_manip_pkt()`
//! updated a zero outer checksum under `CHECKSUM_PARTIAL`, fixed by commit ea64d8d6c675
//! ("netfilter: nat: never update the UDP checksum when it's 0"), first in Linux 5.7
//! (backported to 5.6.13, 5.4.41, 4.19.123, 4.14.181). Calico turns the offload off on
//! its tunnel devices for kernels up to 5.7.0, and did so always for VMware's vmxnet3
//! (calico#4727), whose driver mishandles tunnel offloads on RHEL 8.3-era kernels
//! (k3s#5013, rancher#33399). docs/compatibility.md has the table with its sources.
//!
//! `auto` (the default) turns it off where a fact says it is broken and leaves the
//! kernel's default (on) elsewhere; `on` and `off` are the operator's word.

use std::fmt;

/// The `--vxlan-tx-checksum` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxChecksum {
    #[default]
    Auto,
    On,
    Off,
}

/// A `--vxlan-tx-checksum` value that is none of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: expected auto, on or off")]
pub struct BadTxChecksum(pub String);

impl TxChecksum {
    pub fn parse(text: &str) -> Result<TxChecksum, BadTxChecksum> {
        match text {
            "auto" => Ok(TxChecksum::Auto),
            "on" => Ok(TxChecksum::On),
            "off" => Ok(TxChecksum::Off),
            other => Err(BadTxChecksum(other.to_string())),
        }
    }
}

/// Each device's offload as last read: on or off, or why it could not be set.
pub type DeviceStates = std::collections::BTreeMap<String, Result<bool, String>>;

/// The ethtool feature this decides.
pub const FEATURE: &str = "tx-checksum-ip-generic";

/// What the device gets, and why (for the log and the status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub on: bool,
    pub reason: String,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.on { "on" } else { "off" };
        write!(f, "{FEATURE} {state}: {}", self.reason)
    }
}

/// The first Linux release with the fix (commit ea64d8d6c675).
const FIXED_IN: (u32, u32, u32) = (5, 7, 0);

/// Decides for `setting` on a host whose kernel release (`uname -r`) is `release` and
/// whose underlay interface's driver is `driver` (`None`: no device driver, e.g. a veth).
pub fn decide(setting: TxChecksum, release: &str, driver: Option<&str>) -> Decision {
    let decision = |on: bool, reason: String| Decision { on, reason };
    match setting {
        TxChecksum::On => return decision(true, "--vxlan-tx-checksum=on".into()),
        TxChecksum::Off => return decision(false, "--vxlan-tx-checksum=off".into()),
        TxChecksum::Auto => {}
    }
    let Some(version) = kernel_version(release) else {
        return decision(
            false,
            format!("auto: kernel release {release:?} not understood, assumed to lack the fix"),
        );
    };
    if version < FIXED_IN {
        let (a, b, c) = version;
        return decision(
            false,
            format!(
                "auto: kernel {a}.{b}.{c} is older than 5.7, whose NAT fix (ea64d8d6c675) \
                 keeps VXLAN checksums right (flannel#1279)"
            ),
        );
    }
    if driver == Some("vmxnet3") {
        return decision(
            false,
            "auto: the underlay's driver is vmxnet3, whose tunnel offloads corrupt VXLAN \
             checksums (calico#4727)"
                .into(),
        );
    }
    decision(
        true,
        "auto: no known fault on this kernel and driver (the kernel's default)".into(),
    )
}

/// `5.15.0-91-generic` → (5, 15, 0); `6.1` → (6, 1, 0).
fn kernel_version(release: &str) -> Option<(u32, u32, u32)> {
    let numeric: &str = release
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?;
    let mut parts = numeric.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decision_table() {
        let auto =
            |release: &str, driver: Option<&str>| decide(TxChecksum::Auto, release, driver).on;
        // Older than the fix: off.
        assert!(
            !auto("3.10.0-1160.el7.x86_64", None),
            "RHEL 7 (flannel#1279)"
        );
        assert!(!auto("4.19.0-26-amd64", None));
        assert!(!auto("5.4.0-150-generic", None));
        assert!(!auto("5.6.19", None));
        // With the fix: on, unless the underlay is vmxnet3.
        assert!(auto("5.7.0", None));
        assert!(auto("6.1.0-28-amd64", None));
        assert!(auto("6.8.0-51-generic", Some("virtio_net")));
        assert!(!auto("6.1.0-28-amd64", Some("vmxnet3")), "calico#4727");
        // What cannot be read is assumed broken.
        assert!(!auto("", None));
        assert!(!auto("linux", None));
        // The operator's word wins.
        assert!(decide(TxChecksum::On, "3.10.0", Some("vmxnet3")).on);
        assert!(!decide(TxChecksum::Off, "6.8.0", None).on);
    }

    #[test]
    fn reasons_say_which_fact_decided() {
        let d = decide(TxChecksum::Auto, "4.19.0-26-amd64", None);
        assert_eq!(
            d.to_string(),
            "tx-checksum-ip-generic off: auto: kernel 4.19.0 is older than 5.7, whose NAT fix \
             (ea64d8d6c675) keeps VXLAN checksums right (flannel#1279)"
        );
        assert_eq!(
            decide(TxChecksum::Off, "6.1.0", None).to_string(),
            "tx-checksum-ip-generic off: --vxlan-tx-checksum=off"
        );
    }

    #[test]
    fn settings_parse_strictly() {
        assert_eq!(TxChecksum::parse("auto"), Ok(TxChecksum::Auto));
        assert_eq!(TxChecksum::parse("off"), Ok(TxChecksum::Off));
        assert_eq!(
            TxChecksum::parse("false").unwrap_err().to_string(),
            "\"false\": expected auto, on or off"
        );
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("5.15.0-91-generic"), Some((5, 15, 0)));
        assert_eq!(kernel_version("6.1"), Some((6, 1, 0)));
        assert_eq!(kernel_version("4.19.123"), Some((4, 19, 123)));
        assert_eq!(kernel_version("x"), None);
    }
}
