//! Logging: one `tracing` subscriber for the process, set up once.
//!
//! `RUST_LOG` wins over the config's `log.filter`. Under systemd (JOURNAL_STREAM set)
//! lines carry no timestamps or colours: the journal adds its own.

use tracing_subscriber::EnvFilter;

/// Installs the subscriber; a second call is a no-op.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = if under_journal {
        builder.without_time().with_ansi(false).try_init()
    } else {
        builder.try_init()
    };
}
