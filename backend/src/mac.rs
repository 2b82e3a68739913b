//! MAC addresses: parsing, formatting (lowercase, colon-separated, as flannel writes
//! them) and random locally administered unicast addresses.

/// A 48-bit MAC address.
pub type Mac = [u8; 6];

pub fn format(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive).
pub fn parse(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        // Two hex digits exactly: `from_str_radix` alone would also take a sign ("+a").
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A random locally administered unicast MAC (what flannel generates for VTEPs).
pub fn random() -> Mac {
    let mut mac: Mac = rand::random();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// Unicast and not all-zero: the only FDB entries weft manages.
pub fn is_unicast(mac: &Mac) -> bool {
    mac[0] & 1 == 0 && mac.iter().any(|b| *b != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let mac = parse("0A:58:0a:f4:01:00").unwrap();
        assert_eq!(format(&mac), "0a:58:0a:f4:01:00");
        for bad in [
            "",
            "0a:58:0a:f4:01",
            "0a:58:0a:f4:01:00:00",
            "0a:58:0a:f4:01:0",
            "zz:58:0a:f4:01:00",
            "0a:00:a0:a0:+a:a0",
            "+0:58:0a:f4:01:00",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn random_is_local_unicast() {
        for _ in 0..100 {
            let mac = random();
            assert_eq!(mac[0] & 0x03, 0x02);
            assert!(is_unicast(&mac));
        }
        assert!(!is_unicast(&[0; 6]));
        assert!(!is_unicast(&[0x33, 0x33, 0, 0, 0, 1]));
    }
}
