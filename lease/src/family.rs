//! Address arithmetic shared by IPv4 and IPv6: both are handled as `u128` values with a
//! bit width, so every rule in flannel's config and allocator is written once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP family, with the names flannel uses for it in its error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn width(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// A network as a number and a prefix length; host bits are always zero.
///
/// Packed to 4-byte alignment: 20 bytes instead of the 32 a 16-byte aligned `u128` costs.
/// Every lease key, route and admission set holds one or two per peer. (Fields are read
/// by value; a reference to `addr` is not allowed.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
// Rust layout (fields reordered), only the alignment lowered; never passed to C.
#[allow(clippy::repr_packed_without_abi)]
#[repr(packed(4))]
pub struct Net {
    pub family: Family,
    pub addr: u128,
    pub prefix: u8,
}

impl Net {
    /// Builds a network, masking off host bits (as Go's `net.ParseCIDR` does).
    pub fn new_masked(ip: IpAddr, prefix: u8) -> Net {
        let family = Family::of(ip);
        let addr = to_u128(ip) & mask(family, prefix);
        Net {
            family,
            addr,
            prefix,
        }
    }

    /// Number of addresses in the network.
    pub fn size(&self) -> u128 {
        block(self.family, self.prefix)
    }

    /// Last address of the network.
    pub fn last(&self) -> u128 {
        self.addr + (self.size() - 1)
    }

    pub fn contains(&self, addr: u128) -> bool {
        addr >= self.addr && addr <= self.last()
    }

    pub fn overlaps(&self, other: &Net) -> bool {
        self.family == other.family && self.addr <= other.last() && other.addr <= self.last()
    }

    pub fn ip(&self) -> IpAddr {
        from_u128(self.family, self.addr)
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip(), self.prefix)
    }
}

/// Size of a block of the given prefix length (`2^(width-prefix)`), saturating for /0 in v6.
pub fn block(family: Family, prefix: u8) -> u128 {
    let host_bits = u32::from(family.width() - prefix.min(family.width()));
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}

pub fn mask(family: Family, prefix: u8) -> u128 {
    let width = u32::from(family.width());
    let all = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    all & !all.checked_shr(u32::from(prefix).min(width)).unwrap_or(0)
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub fn from_u128(family: Family, value: u128) -> IpAddr {
    match family {
        // Truncation is intended: v4 values never exceed 32 bits.
        Family::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(mask(Family::V4, 24), 0xffff_ff00);
        assert_eq!(mask(Family::V4, 32), 0xffff_ffff);
        assert_eq!(mask(Family::V4, 0), 0);
        assert_eq!(mask(Family::V6, 128), u128::MAX);
        assert_eq!(mask(Family::V6, 64), u128::MAX << 64);
    }

    #[test]
    fn masked_networks() {
        let n = Net::new_masked("10.244.3.7".parse().unwrap(), 16);
        assert_eq!(n.to_string(), "10.244.0.0/16");
        assert_eq!(n.size(), 65536);
        assert!(n.contains(to_u128("10.244.255.255".parse().unwrap())));
        assert!(!n.contains(to_u128("10.245.0.0".parse().unwrap())));
        let v6 = Net::new_masked("fc00::1".parse().unwrap(), 48);
        assert_eq!(v6.to_string(), "fc00::/48");
    }
}

/// Why a CIDR string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a CIDR (expected ADDRESS/PREFIX, e.g. 10.244.0.0/16)")]
pub struct CidrError(pub String);

impl std::str::FromStr for Net {
    type Err = CidrError;

    /// Parses `ADDRESS/PREFIX` like Go's `net.ParseCIDR`: host bits are masked off.
    fn from_str(text: &str) -> Result<Net, CidrError> {
        let err = || CidrError(text.to_string());
        let (addr, prefix) = text.split_once('/').ok_or_else(err)?;
        let ip: IpAddr = addr.parse().map_err(|_| err())?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 3 {
            return Err(err());
        }
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        if prefix > Family::of(ip).width() {
            return Err(err());
        }
        Ok(Net::new_masked(ip, prefix))
    }
}
