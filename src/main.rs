//! The `attest` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use attest::driver::{self, DriverOptions, Outcome, RunOptions};
use attest::report::ReportOptions;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "attest",
    version,
    about = "NixOS integration tests with Rhai scripts on QEMU, microVMs, containers or ssh hosts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a test's config and script without booting anything (exit 2 on errors).
    Check {
        /// The test config (JSON).
        config: PathBuf,
    },
    /// Boot the nodes, run the script, tear down (exit 0 pass, 1 fail, 2 error).
    Run {
        /// The test config (JSON).
        config: PathBuf,
        /// Write JUnit XML here (one test case per subtest).
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Write the event log here (JSON lines).
        #[arg(long)]
        log_json: Option<PathBuf>,
        /// Keep the state directory (sockets, overlays, logs) after the run.
        #[arg(long)]
        keep_state: bool,
        /// Do not print machines' console lines live.
        #[arg(long)]
        quiet_console: bool,
        /// Open the REPL with the machines in scope instead of running the script.
        #[arg(long, short)]
        interactive: bool,
    },
    /// Open the REPL with the test's machines in scope.
    Repl {
        /// The test config (JSON).
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("ATTEST_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Check { config } => match driver::check_test(&config) {
            Ok((c, _)) => {
                eprintln!("{}: ok ({} nodes)", config.display(), c.nodes.len());
                Outcome::Passed
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        },
        Command::Run {
            config,
            junit,
            log_json,
            keep_state,
            quiet_console,
            interactive,
        } => {
            let opts = RunOptions {
                report: ReportOptions {
                    show_console: !quiet_console,
                    colour: std::io::stderr().is_terminal(),
                    log_json,
                    junit,
                },
                driver: DriverOptions {
                    keep_state,
                    show_console: !quiet_console,
                },
                interactive,
            };
            run(&config, &opts)
        }
        Command::Repl { config } => {
            let opts = RunOptions {
                report: ReportOptions {
                    show_console: false,
                    colour: std::io::stderr().is_terminal(),
                    ..Default::default()
                },
                driver: DriverOptions::default(),
                interactive: true,
            };
            run(&config, &opts)
        }
    };
    ExitCode::from(outcome.exit_code() as u8)
}

fn run(config: &std::path::Path, opts: &RunOptions) -> Outcome {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return Outcome::Error(format!("cannot start the async runtime: {e}")),
    };
    let outcome = driver::run_test(config, opts, &runtime);
    if let Outcome::Error(e) = &outcome {
        if !e.is_empty() {
            eprintln!("{e}");
        }
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    outcome
}
