//! The `attest` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use attest::driver::{self, DriverOptions, Outcome, RunOptions};
use attest::exit_code;
use attest::guest::agent::Protocol;
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
    /// Check a test's config and script without booting anything (exit 2 on
    /// errors, 1 when statements `attest convert` left are marked TODO).
    Check {
        /// The test config (JSON).
        config: PathBuf,
        /// Do not check that the files the config names exist (for a check
        /// before the nodes are built, as Nix's script check does).
        #[arg(long)]
        no_files: bool,
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
        /// Print the lines guest commands write as they come (with the agent,
        /// while the command runs) and keep them in --log-json as events.
        #[arg(long, env = "ATTEST_LIVE_OUTPUT")]
        live_output: bool,
        /// Open the REPL with the machines in scope instead of running the script.
        #[arg(long, short)]
        interactive: bool,
        /// Guest command protocol: the static agent, the bash backdoor, or the agent where it runs (bash otherwise, logged).
        #[arg(long, value_enum, env = "ATTEST_PROTOCOL", default_value = "auto")]
        protocol: Protocol,
    },
    /// Open the REPL with the test's machines in scope.
    Repl {
        /// The test config (JSON).
        config: PathBuf,
    },
    /// Convert a NixOS test (.nix, or a bare Python testScript) into test.rhai + test.json
    /// (exit 0 complete, 1 some statements need a hand, 2 error).
    Convert {
        /// The nixpkgs test file (.nix) or a Python testScript (.py).
        input: PathBuf,
        /// Output directory (one subdirectory per test when the file has several).
        #[arg(long, short, default_value = "converted")]
        out: PathBuf,
        /// Node names of a bare Python testScript (comma-separated; guessed when absent).
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        /// Backend of the generated config: nspawn or qemu.
        #[arg(long, default_value = "nspawn")]
        backend: attest::convert::Backend,
        /// The Debian test image manifest the config points at.
        #[arg(long, default_value = "images/debian/out/manifest.json")]
        image: PathBuf,
    },
    /// Measure boot, command round trips, shutdown, a whole test and scaling on each backend.
    Bench {
        /// The test whose wall time is measured, rewritten to each backend.
        #[arg(default_value = "examples/nginx/test.json")]
        config: PathBuf,
        /// Backends to measure (comma-separated); unavailable ones are listed with the reason.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "nspawn,qemu,firecracker,cloud-hypervisor"
        )]
        backends: Vec<String>,
        /// Guest protocols to measure side by side on each backend (comma-separated).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "bash,agent")]
        protocols: Vec<Protocol>,
        /// Runs per figure on nspawn.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Runs per figure on VM backends (QEMU under TCG boots in about a minute).
        #[arg(long, default_value_t = 1)]
        vm_runs: usize,
        /// `true` round trips per run.
        #[arg(long, default_value_t = 200)]
        commands: usize,
        /// Node counts for the nspawn `start_all` scaling figure (`none`: skip).
        #[arg(long, default_value = "1,4,8,16")]
        scaling: String,
        /// Sizes of the big output and copy figures (comma-separated, m or g: 256m,1g;
        /// `none`: skip); sizes over 256 MiB are measured for the agent on nspawn only.
        #[arg(long, default_value = "256m,1g")]
        big_data: String,
        /// The Debian test image manifest.
        #[arg(long, default_value = "images/debian/out/manifest.json")]
        image: PathBuf,
        /// Also write the figures as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

/// Buffers of big outputs and transfers (frames of up to 1 MiB) come from
/// and go back to the kernel directly: with glibc's default, which rises to
/// 32 MiB after the first frees, freed frames stay in malloc's arenas and
/// a 1 GiB output peaked at ~1.2-1.5 GiB RSS instead of ~1 GiB.
const MMAP_THRESHOLD: libc::c_int = 256 * 1024;

fn main() -> ExitCode {
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("ATTEST_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Check { config, no_files } => {
            match driver::check_test(&config).and_then(|(c, s)| {
                if !no_files {
                    driver::check_files(&c)?;
                }
                Ok((c, s))
            }) {
                Ok((c, script)) => {
                    let n = c.nodes.len();
                    let nodes = if n == 1 { "node" } else { "nodes" };
                    let todos = attest::convert::marked_todos(&script.source);
                    if todos.is_empty() {
                        eprintln!("{}: ok ({n} {nodes})", config.display());
                        Outcome::Passed
                    } else {
                        eprintln!(
                            "{}: valid ({n} {nodes}), but {} statement(s) of {} are marked TODO(convert): `attest convert` could not translate them and a run would skip them; write them by hand:",
                            config.display(),
                            todos.len(),
                            script.path.display()
                        );
                        for (line, text) in todos {
                            eprintln!("  {}:{line}: {text}", script.path.display());
                        }
                        return ExitCode::from(exit_code::FAILED);
                    }
                }
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(exit_code::INVALID);
                }
            }
        }
        Command::Run {
            config,
            junit,
            log_json,
            keep_state,
            quiet_console,
            live_output,
            interactive,
            protocol,
        } => {
            let opts = RunOptions {
                report: ReportOptions {
                    show_console: !quiet_console,
                    colour: std::io::stderr().is_terminal(),
                    progress: std::io::stderr().is_terminal(),
                    log_json,
                    junit,
                    live_output,
                },
                driver: DriverOptions {
                    keep_state,
                    protocol,
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
                    progress: std::io::stderr().is_terminal(),
                    ..Default::default()
                },
                driver: DriverOptions::default(),
                interactive: true,
            };
            run(&config, &opts)
        }
        Command::Convert {
            input,
            out,
            nodes,
            backend,
            image,
        } => {
            let opts = attest::convert::ConvertOptions {
                nodes,
                backend,
                image,
            };
            return convert(&input, &out, &opts);
        }
        Command::Bench {
            config,
            backends,
            protocols,
            runs,
            vm_runs,
            commands,
            scaling,
            big_data,
            image,
            json,
        } => {
            let opts = attest::bench::BenchOptions {
                test_config: config,
                image,
                backends,
                protocols,
                runs: runs.max(1),
                vm_runs: vm_runs.max(1),
                commands: commands.max(1),
                scaling: match attest::bench::parse_counts(&scaling) {
                    Ok(v) => v,
                    Err(e) => {
                        eprintln!("attest bench: --scaling: {e}");
                        return ExitCode::from(exit_code::INVALID);
                    }
                },
                big_data: match attest::bench::big_data::parse_sizes(&big_data) {
                    Ok(v) => v,
                    Err(e) => {
                        eprintln!("attest bench: --big-data: {e}");
                        return ExitCode::from(exit_code::INVALID);
                    }
                },
                colour: std::io::stderr().is_terminal(),
            };
            return bench(&opts, json.as_deref());
        }
    };
    ExitCode::from(outcome.exit_code())
}

/// `attest convert`: 0 when every test converted completely, 1 when some
/// statement needs a hand, 2 when nothing could be written.
fn convert(
    input: &std::path::Path,
    out: &std::path::Path,
    opts: &attest::convert::ConvertOptions,
) -> ExitCode {
    let written = attest::convert::convert_file(input, opts)
        .and_then(|c| attest::convert::write(&c, out, opts));
    match written {
        Ok(summaries) => {
            let source = input.display().to_string();
            for s in &summaries {
                print!("{}", s.render(&source));
            }
            ExitCode::from(if summaries.iter().all(|s| s.complete()) {
                exit_code::PASSED
            } else {
                exit_code::FAILED
            })
        }
        Err(e) => {
            eprintln!("attest convert: {e}");
            ExitCode::from(exit_code::INVALID)
        }
    }
}

/// `attest bench`: 0 when every figure was taken, 1 when some failed or the
/// run was interrupted, 2 when it could not start.
fn bench(opts: &attest::bench::BenchOptions, json: Option<&std::path::Path>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(exit_code::INVALID);
        }
    };
    let report = match attest::bench::run(opts, &runtime) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("attest bench: {e}");
            return ExitCode::from(exit_code::INVALID);
        }
    };
    print!("{}", attest::bench::output::table(&report));
    if let Some(path) = json {
        if let Err(e) = attest::bench::output::write_json(&report, path) {
            eprintln!("attest bench: cannot write {}: {e}", path.display());
            return ExitCode::from(exit_code::INVALID);
        }
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    let failed =
        report.interrupted.is_some() || report.backends.iter().any(|b| !b.errors.is_empty());
    ExitCode::from(if failed {
        exit_code::FAILED
    } else {
        exit_code::PASSED
    })
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
