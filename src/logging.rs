//! Logging setup: `tracing` to stderr, human-readable or one JSON object per line
//! (`--log-format=json`: `timestamp`, `level`, `fields.message` and the other fields, for
//! log shippers). flannel's klog `-v` level maps onto tracing levels; `RUST_LOG` (an
//! env-filter directive) wins when set.

use crate::cli::LogFormat;
use tracing_subscriber::EnvFilter;

/// The filter without `RUST_LOG`: the `-v` level, less kube's request tracing, which
/// logs every failed API request at ERROR ("failed with error client error (Connect)",
/// without the cause or what was asked) next to weft's own line for it, which names the
/// request and the whole cause and says when it is retried.
fn default_directives(verbosity: u8) -> String {
    let level = match verbosity {
        0 => "info",
        1..=3 => "debug",
        _ => "trace",
    };
    format!("{level},kube_client::client::builder=off")
}

pub fn init(verbosity: u8, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_directives(verbosity)));
    if format == LogFormat::Json {
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init();
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs in files and journals stay greppable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_filter_follows_v_and_drops_kubes_request_errors() {
        assert_eq!(
            default_directives(0),
            "info,kube_client::client::builder=off"
        );
        assert!(default_directives(2).starts_with("debug,"));
        assert!(default_directives(9).starts_with("trace,"));
        // A valid filter.
        assert!(EnvFilter::try_new(default_directives(0)).is_ok());
    }
}
