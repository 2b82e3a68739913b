//! flannel's traffic rules: IP masquerade (`--ip-masq`) and the FORWARD accept rules
//! (`--iptables-forward-rules`), through iptables (nft or legacy) or, with
//! `EnableNFTables`, nftables; the other mode's leftovers are removed.
//!
//! Split like the datapath: what the rules are is pure ([`render`]: flannel's exact rule
//! text for a [`RuleSpec`]; [`iptables`]: `iptables-save` output → the state of flannel's
//! chains → an `iptables-restore --noflush` payload; [`nfnetlink`]: the few netfilter
//! netlink messages weft sends), and [`Firewall`] is the small executor that reads the
//! kernel and applies changes. Its two ways of holding the rules implement one small
//! interface (`mode::RuleMode`: sync, remove leftovers): `iptables_mode` and `nft_mode`;
//! `tools` finds and runs the binaries.
//!
//! **Cost of a check.** A check first reads the nftables generation counter over netlink
//! (one request, no child process). The kernel bumps it on every nftables change, and
//! both nftables mode and iptables-nft keep their rules in nftables, so when it has not
//! moved since the last verified check, nothing is read and nothing is spawned. Only
//! when it moved (or the wanted rules changed) are the rules read (`iptables-save`, `nft
//! list table`) and compared, and repaired with one atomic `iptables-restore --noflush`
//! or `nft -f` per family. iptables-legacy keeps its rules in the kernel's xt tables,
//! which have no such counter: there a check reads them with `iptables-save` (one
//! process per family). See docs/design.md for the measurements.

pub mod iptables;
pub mod nfnetlink;
pub mod render;

mod firewall;
mod iptables_mode;
mod mode;
mod nft_mode;
mod report;
mod tools;

pub use firewall::Firewall;
pub use render::{FamilyNets, RuleSpec};
pub use report::CheckReport;
pub use tools::{IptablesVariant, parse_version};

/// Why a rules check failed.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error(
        "no iptables binary found (looked for iptables, iptables-nft and iptables-legacy with \
         their -save and -restore tools in {0}); install iptables or set EnableNFTables"
    )]
    NoIptables(String),
    #[error("no nft binary found in {0}; EnableNFTables needs the nftables package")]
    NoNft(String),
    #[error("cannot run {command}: {cause}")]
    Spawn {
        command: String,
        cause: std::io::Error,
    },
    #[error("{command} did not finish within {seconds} s")]
    Timeout { command: String, seconds: u64 },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error(
        "iptables cannot read the {table} table ({family}): it holds nftables rules iptables \
         does not understand; remove them or set EnableNFTables"
    )]
    Incompatible { table: String, family: &'static str },
    #[error("the rules are still wrong after applying them: {0}")]
    NotApplied(String),
}
