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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
