//! The `duetbox` command line. All logic lives in the library; this file parses, reports
//! and maps errors to exit codes.
//!
//! Only `--version` exists so far: the service (`duetbox serve`) arrives with the
//! network layer (issue P2).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-V") => {
            let version = env!("CARGO_PKG_VERSION");
            // The CLI's own output, not a log line.
            #[allow(clippy::print_stdout)]
            {
                println!("duetbox {version}");
            }
            ExitCode::SUCCESS
        }
        _ => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("usage: duetbox --version\n(the service itself is not built yet)");
            }
            ExitCode::from(2)
        }
    }
}
