//! subnet.env: rendering (pure), atomic writing, and reading back the previous subnet.
//!
//! The format is flannel's exactly (the CNI plugin and tools like mk-docker-opts.sh
//! parse it): `KEY=VALUE` lines in a fixed order, no quoting, no comments.

use std::io::Write;
use std::path::Path;
use weft_subnet::SubnetKey;
use weft_subnet::family::{self, Net};

/// What subnet.env says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Option<Net>,
    pub subnet: Option<Net>,
    pub ipv6_network: Option<Net>,
    pub ipv6_subnet: Option<Net>,
    pub mtu: u32,
    pub ip_masq: bool,
}

impl SubnetEnv {
    /// Renders the file. `*_SUBNET` carries the first host address of the subnet (the
    /// bridge gateway), as flannel writes it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let first_host = |net: &Net| {
            format!(
                "{}/{}",
                family::from_u128(net.family, net.addr + 1),
                net.prefix
            )
        };
        if let (Some(network), Some(subnet)) = (&self.network, &self.subnet) {
            out.push_str(&format!("FLANNEL_NETWORK={network}\n"));
            out.push_str(&format!("FLANNEL_SUBNET={}\n", first_host(subnet)));
        }
        if let (Some(network), Some(subnet)) = (&self.ipv6_network, &self.ipv6_subnet) {
            out.push_str(&format!("FLANNEL_IPV6_NETWORK={network}\n"));
            out.push_str(&format!("FLANNEL_IPV6_SUBNET={}\n", first_host(subnet)));
        }
        out.push_str(&format!("FLANNEL_MTU={}\n", self.mtu));
        out.push_str(&format!("FLANNEL_IPMASQ={}\n", self.ip_masq));
        out
    }
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory is
/// written, fsynced and renamed over the target, so readers (the CNI plugin) never see
/// a partial file. The directory is created (0755) if needed; the file is 0644.
pub fn write_atomic(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        // Persist the rename itself.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Reads `FLANNEL_SUBNET` and `FLANNEL_IPV6_SUBNET` from an existing subnet.env (the
/// subnet this node had before a restart). Anything unreadable means "none".
pub fn read_previous(path: &Path) -> Option<SubnetKey> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_previous(&text)
}

/// Parses dotenv-style text: blank lines and `#` comments skipped, optional `export `,
/// optional matching quotes. A value holding several comma-separated CIDRs is ignored
/// (as in flannel).
pub fn parse_previous(text: &str) -> Option<SubnetKey> {
    let mut key = SubnetKey {
        ipv4: None,
        ipv6: None,
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        let parsed = if value.contains(',') {
            None
        } else {
            value.parse::<Net>().ok()
        };
        match name.trim() {
            "FLANNEL_SUBNET" => key.ipv4 = parsed.filter(|n| n.family == family::Family::V4),
            "FLANNEL_IPV6_SUBNET" => key.ipv6 = parsed.filter(|n| n.family == family::Family::V6),
            _ => {}
        }
    }
    (key.ipv4.is_some() || key.ipv6.is_some()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Option<Net> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn renders_flannels_dual_stack_example() {
        let env = SubnetEnv {
            network: net("10.42.0.0/16"),
            subnet: net("10.42.0.0/24"),
            ipv6_network: net("2001:cafe:42::/56"),
            ipv6_subnet: net("2001:cafe:42::/64"),
            mtu: 1450,
            ip_masq: true,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn renders_ipv4_only_and_ipv6_only() {
        let v4 = SubnetEnv {
            network: net("10.244.0.0/16"),
            subnet: net("10.244.7.0/24"),
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 1500,
            ip_masq: false,
        };
        assert_eq!(
            v4.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n"
        );
        let v6 = SubnetEnv {
            network: None,
            subnet: None,
            ipv6_network: net("fc00::/48"),
            ipv6_subnet: net("fc00:0:0:5::/64"),
            ..v4
        };
        assert_eq!(
            v6.render(),
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:5::1/64\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n"
        );
    }

    #[test]
    fn previous_subnet_is_masked_and_tolerant() {
        let key = parse_previous(
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_MTU=1450\n",
        )
        .unwrap();
        assert_eq!(key.to_string(), "10.5.52.0-24");
        let key = parse_previous("# comment\nexport FLANNEL_SUBNET=\"10.5.52.1/24\"\nFLANNEL_IPV6_SUBNET=fc00:0:0:3::1/64\n").unwrap();
        assert_eq!(key.to_string(), "10.5.52.0-24&fc00:0:0:3::-64");
        assert_eq!(
            parse_previous("FLANNEL_SUBNET=10.5.52.1/24,10.6.0.1/24\n"),
            None
        );
        assert_eq!(parse_previous("FLANNEL_SUBNET=garbage\n"), None);
        assert_eq!(parse_previous(""), None);
    }

    #[test]
    fn atomic_write_creates_directory_and_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        write_atomic(&path, "A=1\n").unwrap();
        write_atomic(&path, "A=2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "A=2\n");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }
}
