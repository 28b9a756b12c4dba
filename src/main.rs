//! The `duetbox` command line. All logic lives in the library; this file parses, reports
//! and maps errors to exit codes (2: bad command line or config, 1: runtime failure).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use duetbox::config::{Config, DEFAULT_TOML};

/// duetbox: phones as microphones, mixed on a small box, each singer's mix sent back.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the box: web server, WebRTC, audio output.
    Serve {
        /// Configuration file (TOML). Without it, the defaults apply.
        #[arg(long, short, env = "DUETBOX_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Looks for boxes on the LAN (mDNS) and prints one line each:
    /// `<page URL> <name> id=<id> host=<host> v=<version> addresses=<a,b>`.
    Find {
        /// How long to listen, seconds.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Stop at the first box found.
        #[arg(long)]
        first: bool,
        /// Also wait for boxes to say goodbye and print `gone <full name>` for each.
        #[arg(long)]
        goodbyes: bool,
        /// Only these interfaces (as `discovery.interfaces`; default: the LAN).
        #[arg(long = "interface")]
        interfaces: Vec<String>,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Prints the documented default configuration.
    Default,
    /// Checks a configuration file and prints the effective configuration (secrets hidden).
    Check {
        /// The file to check.
        file: Option<PathBuf>,
    },
}

fn load(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(path, std::env::vars()).map_err(|e| {
        report(&format!("configuration error: {e}"));
        ExitCode::from(2)
    })
}

/// The CLI's own output to the terminal, not a log line.
#[allow(clippy::print_stderr)]
fn report(text: &str) {
    eprintln!("duetbox: {text}");
}

#[allow(clippy::print_stdout)]
fn print(text: &str) {
    print!("{text}");
}

fn find(seconds: f64, first: bool, goodbyes: bool, interfaces: Vec<String>) -> ExitCode {
    let mut filter = duetbox::config::DiscoveryConfig::default().filter();
    filter.only = interfaces;
    let duration = std::time::Duration::from_secs_f64(seconds.clamp(0.1, 3600.0));
    let has_v4 = |f: &duetbox::discovery::Found| f.addresses.iter().any(|a| a.is_ipv4());
    let mut printed: Vec<String> = Vec::new();
    let seen = duetbox::discovery::browse(&filter, duration, |seen| {
        if goodbyes {
            // Say what is found as it is found (a caller waits for it before the goodbye),
            // each box once, when it has an IPv4 address.
            for found in seen.found.iter().filter(|f| has_v4(f)) {
                if !printed.contains(&found.fullname) {
                    print(&describe(found));
                    printed.push(found.fullname.clone());
                }
            }
            return !seen.removed.is_empty();
        }
        // An address record may come after the service's: wait for IPv4 with --first.
        first && seen.found.iter().any(has_v4)
    });
    match seen {
        Ok(seen) => {
            if !goodbyes {
                for found in &seen.found {
                    print(&describe(found));
                }
            }
            for gone in &seen.removed {
                print(&format!("gone {gone}\n"));
            }
            if seen.found.is_empty() && seen.removed.is_empty() {
                report("no box found");
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            report(&format!("{e}"));
            ExitCode::from(1)
        }
    }
}

/// One line for a found box.
fn describe(found: &duetbox::discovery::Found) -> String {
    let addresses: Vec<String> = found.addresses.iter().map(|a| a.to_string()).collect();
    let txt = |k: &str| found.txt.get(k).cloned().unwrap_or_default();
    format!(
        "{} {:?} id={} host={} v={} addresses={}\n",
        found.url(),
        txt("name"),
        txt("id"),
        found.host,
        txt("v"),
        addresses.join(",")
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Find {
            seconds,
            first,
            goodbyes,
            interfaces,
        } => find(seconds, first, goodbyes, interfaces),
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print(DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match load(file.as_deref()) {
            Ok(config) => {
                print(&config.to_redacted_toml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Serve { config } => {
            let config = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            duetbox::telemetry::init(&config.log.filter);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    report(&format!("starting the async runtime: {e}"));
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(duetbox::app::run(config, duetbox::app::shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "duetbox stopped");
                    report(&format!("{e:#}"));
                    ExitCode::from(1)
                }
            }
        }
    }
}
