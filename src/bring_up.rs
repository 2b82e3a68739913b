//! Bring-up shared by both modes: the external interface, the checks against the host's
//! networks, and the backend with its datapath, built from one [`BackendSpec`] (the only
//! place that decides whether this build can run a config's backend).

use crate::host_check;
use crate::iface::{self, ExternalInterface, IfaceRequest};
use crate::settings::NodeSettings;
use anyhow::{Context, bail};
use std::net::IpAddr;
use tokio::sync::mpsc;
use tracing::info;
use weft_backend::backend::{AllocBackend, Backend, ExternalSpec, HostGwBackend, VxlanBackend};
use weft_backend::backend_field::FieldError;
use weft_backend::hostgw;
use weft_backend::kernel::{HostSnapshot, Kernel, KernelEvent};
use weft_backend::mac::{self, Mac};
use weft_backend::nexthop::NexthopPlan;
use weft_backend::offload::{self, TxChecksum};
use weft_backend::reconcile::{Reconciler, Surroundings};
use weft_backend::tunnel::key;
use weft_backend::vxlan::{self, VxlanConfig};
use weft_backend::wireguard::config::WireguardConfig;
use weft_backend::wireguard::{self, WireguardBackend};
use weft_subnet::BackendData;
use weft_subnet::config::BackendType;
use weft_subnet::family::{Family, Net};
use weft_subnet::{NetworkConfig, SubnetKey};

/// The backend a config asks for, parsed and checked once.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendSpec {
    Vxlan(VxlanConfig),
    HostGw,
    Wireguard(WireguardConfig),
    Alloc,
}

/// Backends this build of weftd can run.
pub const IMPLEMENTED_BACKENDS: [BackendType; 4] = [
    BackendType::Vxlan,
    BackendType::HostGw,
    BackendType::Wireguard,
    BackendType::Alloc,
];

/// Why this build cannot run a configured backend.
#[derive(Debug, thiserror::Error)]
pub enum UnrunnableBackend {
    /// A field of the backend's section (vxlan's or wireguard's).
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error(
        "backend type {0} is not implemented in this weftd build (implemented: {implemented})",
        implemented = IMPLEMENTED_BACKENDS.map(|b| b.name()).join(", ")
    )]
    NotImplemented(BackendType),
}

impl BackendSpec {
    /// The backend of `config`, or why this build cannot run it.
    pub fn from_config(config: &NetworkConfig) -> Result<BackendSpec, UnrunnableBackend> {
        match config.backend.kind {
            BackendType::Vxlan => Ok(BackendSpec::Vxlan(VxlanConfig::for_network(config)?)),
            BackendType::HostGw => Ok(BackendSpec::HostGw),
            BackendType::Wireguard => Ok(BackendSpec::Wireguard(WireguardConfig::parse(
                &config.backend.raw,
            )?)),
            BackendType::Alloc => Ok(BackendSpec::Alloc),
            other => Err(UnrunnableBackend::NotImplemented(other)),
        }
    }
}

/// Reads the host, resolves `--iface-can-reach` and chooses the external interface.
pub async fn choose_interface(
    request: IfaceRequest,
    config: &NetworkConfig,
) -> anyhow::Result<(HostSnapshot, ExternalInterface)> {
    let host = weft_backend::kernel::read_host()
        .await
        .context("cannot read the host's interfaces")?;
    let request = resolve_can_reach(request, config).await?;
    let external =
        iface::select(&host, &request).context("cannot choose the external interface")?;
    info!(
        interface = %external.name,
        address = %or_none(external.iface_addr),
        address_v6 = %or_none(external.iface_v6_addr),
        public_ip = %or_none(external.ext_addr),
        public_ipv6 = %or_none(external.ext_v6_addr),
        "using interface {}: {}", external.name, external.reason
    );
    Ok((host, external))
}

/// Refuses a cluster network that overlaps the host's networks (see [`host_check`]).
pub fn check_network(
    config: &NetworkConfig,
    host: &HostSnapshot,
    external: &ExternalInterface,
) -> anyhow::Result<()> {
    let connected = host_check::connected_networks(host, |name| name.starts_with("flannel"));
    Ok(host_check::check_network(
        config,
        &connected,
        &external.name,
    )?)
}

/// Refuses an own subnet that overlaps a network of the host (see [`host_check`]).
pub fn check_own_subnet(own: &SubnetKey, datapath: &Reconciler) -> anyhow::Result<()> {
    Ok(host_check::check_own_subnet(
        own,
        &datapath.surroundings().host_networks,
    )?)
}

/// Backend data (v4, v6) this node published before.
pub type PublishedData = (Option<BackendData>, Option<BackendData>);

/// The backend for `config` on `external`, its datapath, and the kernel notifications
/// that trigger reconcile passes.
pub async fn build_datapath(
    config: &NetworkConfig,
    external: &ExternalInterface,
    host: &HostSnapshot,
    published: PublishedData,
    settings: &NodeSettings,
) -> anyhow::Result<(Reconciler, mpsc::UnboundedReceiver<KernelEvent>)> {
    let kernel = Kernel::connect()
        .context("cannot open netlink")?
        .with_wireguard_userspace(settings.wireguard_userspace.clone());
    let nexthop_objects = if settings.nexthop_objects {
        kernel_has_nexthop_objects(&kernel).await
    } else {
        info!("peer routes are plain gateway routes (--nexthop-objects=false)");
        false
    };
    let backend: Box<dyn Backend> = match BackendSpec::from_config(config) {
        Ok(BackendSpec::Vxlan(config)) => {
            let node = vxlan_node(&config, external, host, &kernel, published).await?;
            Box::new(VxlanBackend {
                config,
                node,
                nexthops: NexthopPlan::off(),
            })
        }
        Ok(BackendSpec::HostGw) => Box::new(host_gw_backend(external, host)?),
        Ok(BackendSpec::Wireguard(wg)) => {
            Box::new(wireguard_backend(wg, config, external, settings)?)
        }
        Ok(BackendSpec::Alloc) => Box::new(AllocBackend { mtu: external.mtu }),
        Err(problem) => bail!("{problem}"),
    };
    let surroundings = Surroundings {
        network_v4: config.ipv4.map(|p| p.network),
        network_v6: config.ipv6.map(|p| p.network),
        public_ips: [
            external.ext_addr.map(IpAddr::V4),
            external.ext_v6_addr.map(IpAddr::V6),
        ]
        .into_iter()
        .flatten()
        .collect(),
        host_networks: host_check::connected_networks(host, |name| backend.owns_device(name)),
    };
    let kernel_events =
        weft_backend::kernel::subscribe().context("cannot subscribe to netlink notifications")?;
    let vxlan = matches!(BackendSpec::from_config(config), Ok(BackendSpec::Vxlan(_)));
    let mut datapath = Reconciler::new(backend, kernel, surroundings);
    datapath.use_nexthop_objects(nexthop_objects);
    if vxlan {
        let decision = tx_checksum_decision(settings.tx_checksum, &external.name);
        info!("VXLAN devices: {decision}");
        datapath.set_tx_checksum(decision);
    }
    Ok((datapath, kernel_events))
}

/// The VXLAN devices' TX checksum offload for this host: its kernel release and the
/// underlay interface's driver (`/sys/class/net/<name>/device/driver`; none for a veth
/// or a bridge), decided by `weft_backend::offload::decide`.
fn tx_checksum_decision(setting: TxChecksum, underlay: &str) -> offload::Decision {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let driver = std::fs::read_link(format!("/sys/class/net/{underlay}/device/driver"))
        .ok()
        .and_then(|link| link.file_name().map(|n| n.to_string_lossy().into_owned()));
    offload::decide(setting, release.trim(), driver.as_deref())
}

/// Whether the kernel has nexthop objects; logs the decision.
async fn kernel_has_nexthop_objects(kernel: &Kernel) -> bool {
    match kernel.has_nexthop_objects().await {
        Ok(true) => {
            info!("peer routes go through nexthop objects (--nexthop-objects=false: plain routes)");
            true
        }
        Ok(false) => {
            info!(
                "this kernel has no nexthop objects (Linux < 5.3): peer routes are plain \
                 gateway routes"
            );
            false
        }
        Err(e) => {
            info!("cannot read nexthop objects ({e}): peer routes are plain gateway routes");
            false
        }
    }
}

/// This node's host-gw side, after flannel's NAT check: routes go via the public IP, so
/// it must be the interface's own address.
fn host_gw_backend(
    external: &ExternalInterface,
    host: &HostSnapshot,
) -> anyhow::Result<HostGwBackend> {
    let differs =
        |public: Option<IpAddr>, iface: Option<IpAddr>| public.is_some() && public != iface;
    if differs(
        external.ext_addr.map(IpAddr::V4),
        external.iface_addr.map(IpAddr::V4),
    ) || differs(
        external.ext_v6_addr.map(IpAddr::V6),
        external.iface_v6_addr.map(IpAddr::V6),
    ) {
        bail!("{}", hostgw::NAT_MESSAGE);
    }
    Ok(HostGwBackend {
        nexthops: NexthopPlan::off(),
        node: hostgw::Node {
            own: SubnetKey {
                ipv4: None,
                ipv6: None,
            },
            external_name: external.name.clone(),
            external_mtu: external.mtu,
            connected: connected_to(external, host),
        },
    })
}

/// This node's wireguard side: its private key from the key file (or a new one written
/// there), never logged; the public key is.
fn wireguard_backend(
    config: WireguardConfig,
    network: &NetworkConfig,
    external: &ExternalInterface,
    settings: &NodeSettings,
) -> anyhow::Result<WireguardBackend> {
    let path = &settings.wireguard_key_file;
    let (private_key, origin) = key::load_or_create(path)?;
    let public_key = private_key.public_key();
    match origin {
        key::KeyOrigin::Generated => {
            info!(file = %path.display(), %public_key, "generated a WireGuard private key")
        }
        key::KeyOrigin::Read => {
            info!(file = %path.display(), %public_key, "read the WireGuard private key")
        }
        key::KeyOrigin::ReadAndNarrowed => tracing::warn!(
            file = %path.display(), %public_key,
            "read the WireGuard private key; its file was readable by other users and is now 0600"
        ),
    }
    match &settings.wireguard_userspace {
        Some(command) => info!(
            "WireGuard: the kernel's, or `{}` where the kernel has none",
            command.join(" ")
        ),
        None => info!("WireGuard: the kernel's (--wireguard-userspace names a fallback)"),
    }
    info!(
        mode = config.mode.name(),
        listen_port = config.listen_port,
        listen_port_v6 = config.listen_port_v6,
        keepalive = config.keepalive,
        psk = config.psk.is_some(),
        "wireguard backend"
    );
    Ok(WireguardBackend {
        config,
        node: wireguard::Node {
            own: SubnetKey {
                ipv4: None,
                ipv6: None,
            },
            network_v4: network.ipv4.map(|p| p.network),
            network_v6: network.ipv6.map(|p| p.network),
            external_name: external.name.clone(),
            external_mtu: external.mtu,
            public_v4: external.ext_addr,
            public_v6: external.ext_v6_addr,
            private_key,
        },
    })
}

/// Networks directly connected to the external interface (host-gw routes and vxlan
/// DirectRouting need the peer on one of them).
/// The external interface as the backends use it.
pub fn external_spec(external: &ExternalInterface, host: &HostSnapshot) -> ExternalSpec {
    ExternalSpec {
        index: external.index,
        name: external.name.clone(),
        mtu: external.mtu,
        local_v4: external.iface_addr.map(IpAddr::V4),
        local_v6: external.iface_v6_addr.map(IpAddr::V6),
        connected: connected_to(external, host),
    }
}

fn connected_to(external: &ExternalInterface, host: &HostSnapshot) -> Vec<Net> {
    host.links
        .iter()
        .filter(|l| l.index == external.index)
        .flat_map(|l| l.addresses.iter())
        .map(|a| Net::new_masked(a.ip, a.prefix))
        .collect()
}

/// This node's vxlan side. The VTEP MACs survive restarts and device re-creation: an
/// existing device keeps its MAC; without one, the MAC this node published before (in
/// its etcd lease or its Node's `backend-data` annotation) is reused, so peers' entries
/// stay valid; else a random one.
async fn vxlan_node(
    config: &VxlanConfig,
    external: &ExternalInterface,
    host: &HostSnapshot,
    kernel: &Kernel,
    published: PublishedData,
) -> anyhow::Result<vxlan::Node> {
    let mut macs = [mac::random(), mac::random()];
    for (slot, family) in [(0, Family::V4), (1, Family::V6)] {
        let name = config.device_name(family);
        let from_published = match family {
            Family::V4 => vxlan::vtep_mac(published.0.as_ref()),
            Family::V6 => vxlan::vtep_mac(published.1.as_ref()),
        };
        let existing: Option<Mac> = kernel
            .link(&name)
            .await
            .context("cannot read vxlan devices")?
            .map(|(_, m)| m);
        let (mac, source) = match (existing, from_published) {
            (Some(m), _) => (m, "the existing device"),
            (None, Some(m)) => (m, "what this node published before"),
            (None, None) => (macs[slot], "newly generated"),
        };
        macs[slot] = mac;
        if (family == Family::V4 && external.iface_addr.is_some())
            || (family == Family::V6 && external.iface_v6_addr.is_some())
        {
            info!(device = %name, mac = %mac::format(&mac), "VTEP MAC from {source}");
        }
    }
    let connected = connected_to(external, host);
    Ok(vxlan::Node {
        own: SubnetKey {
            ipv4: None,
            ipv6: None,
        },
        external_index: external.index,
        external_name: external.name.clone(),
        external_mtu: external.mtu,
        local_v4: external.iface_addr.map(IpAddr::V4),
        local_v6: external.iface_v6_addr.map(IpAddr::V6),
        connected,
        mac_v4: macs[0],
        mac_v6: macs[1],
    })
}

/// Fills in the families from the config and asks the kernel for the `--iface-can-reach`
/// route and the route to the first etcd endpoint.
async fn resolve_can_reach(
    mut request: IfaceRequest,
    config: &NetworkConfig,
) -> anyhow::Result<IfaceRequest> {
    request.ipv4 = config.ipv4.is_some();
    request.ipv6 = config.ipv6.is_some();
    if let Some((target, _)) = request.can_reach {
        let route = weft_backend::kernel::route_to(target)
            .await
            .context("route lookup for --iface-can-reach")?;
        request.can_reach = Some((target, route));
    }
    if let Some((target, _)) = request.etcd_reach {
        // Only a preference: without a route the default route decides, as in flannel.
        let route = weft_backend::kernel::route_to(target).await.ok().flatten();
        request.etcd_reach = Some((target, route));
    }
    Ok(request)
}

fn or_none<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "none".to_string(), |v| v.to_string())
}
