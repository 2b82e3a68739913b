//! Logging setup: `tracing` to stderr, human-readable or one JSON object per line
//! (`--log-format=json`: `timestamp`, `level`, `fields.message` and the other fields, for
//! log shippers). flannel's klog `-v` level maps onto tracing levels; `RUST_LOG` (an
//! env-filter directive) wins when set.

use crate::cli::LogFormat;
use tracing_subscriber::EnvFilter;

pub fn init(verbosity: u8, format: LogFormat) {
    let default = match verbosity {
        0 => "info",
        1..=3 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
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
