//! CIDR parsing and printing with Go's `net` package rules, since flannel's plugin parses
//! subnet.env and `ipam.routes` with Go and re-prints what it parsed into the delegate
//! config (so `fc00:0::/48` comes out as `fc00::/48`, and `10.1.17.1/24` as a subnet
//! becomes `10.1.17.0/24`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address with a prefix length, printed as Go's `(*net.IPNet).String()` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// Go's `net.ParseCIDR` error text, kept because flannel shows it to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR address: {0}")]
pub struct CidrError(pub String);

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::y/n` as Go's `net.ParseCIDR` does, keeping the address as
    /// written (host bits included). Use [`Cidr::network`] for the network address.
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let err = || CidrError(s.to_owned());
        let (addr, len) = s.split_once('/').ok_or_else(err)?;
        // Go's parser: decimal digits only (no sign, no spaces), at most the address size.
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = len
            .parse::<u16>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(err)?;
        Ok(Cidr {
            addr,
            prefix: u8::try_from(prefix).map_err(|_| err())?,
        })
    }

    /// The network address: host bits cleared (what Go's `ParseCIDR` returns as `*IPNet`).
    pub fn network(self) -> Cidr {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Cidr {
            addr,
            prefix: self.prefix,
        }
    }
}

impl fmt::Display for Cidr {
    /// Go prints an IPv4-mapped IPv6 network in its IPv4 form, with the mask's last 32
    /// bits as the prefix length; everything else prints as one would expect.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
                write!(
                    f,
                    "{}/{}",
                    go_ip_string(self.addr),
                    self.prefix.saturating_sub(96)
                )
            }
            _ => write!(f, "{}/{}", self.addr, self.prefix),
        }
    }
}

/// Go's `net.IP.String()`: IPv4-mapped IPv6 addresses print as IPv4.
pub fn go_ip_string(addr: IpAddr) -> String {
    match addr {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => a.to_string(),
        },
        IpAddr::V4(a) => a.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_like_go() {
        for (input, kept, network) in [
            ("10.1.17.1/24", "10.1.17.1/24", "10.1.17.0/24"),
            ("10.244.0.0/16", "10.244.0.0/16", "10.244.0.0/16"),
            ("0.0.0.0/0", "0.0.0.0/0", "0.0.0.0/0"),
            ("10.1.2.3/32", "10.1.2.3/32", "10.1.2.3/32"),
            ("fc00::1/64", "fc00::1/64", "fc00::/64"),
            ("FC00:0:0::/48", "fc00::/48", "fc00::/48"),
            (
                "2001:db8:0:1:0:0:0:1/64",
                "2001:db8:0:1::1/64",
                "2001:db8:0:1::/64",
            ),
            (
                "2001:db8::1:0:0:1/128",
                "2001:db8::1:0:0:1/128",
                "2001:db8::1:0:0:1/128",
            ),
            ("::ffff:10.1.0.0/112", "10.1.0.0/16", "10.1.0.0/16"),
            ("10.1.0.0/024", "10.1.0.0/24", "10.1.0.0/24"),
        ] {
            let c = Cidr::parse(input).unwrap();
            assert_eq!(c.to_string(), kept, "{input}");
            assert_eq!(c.network().to_string(), network, "{input}");
        }
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "",
            "10.1.0.0",
            "10.1.0.0/",
            "10.1.0.0/33",
            "10.1.0.0/+8",
            "10.1.0.0/ 8",
            " 10.1.0.0/8",
            "10.1.0.0/8 ",
            "010.1.0.0/8",
            "10.1.0/8",
            "fc00::/129",
            "fe80::1%eth0/64",
            "foo/8",
        ] {
            assert_eq!(Cidr::parse(bad), Err(CidrError(bad.into())), "{bad:?}");
        }
        assert_eq!(
            Cidr::parse("10.1.0.0/33").unwrap_err().to_string(),
            "invalid CIDR address: 10.1.0.0/33"
        );
    }

    #[test]
    fn ip_strings_follow_go() {
        assert_eq!(go_ip_string("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3");
        assert_eq!(go_ip_string("fc00::0:1".parse().unwrap()), "fc00::1");
        assert_eq!(go_ip_string("10.1.2.3".parse().unwrap()), "10.1.2.3");
    }
}
