//! [`MachineError`]: why a machine operation failed, with the context a user
//! needs (machine, command, status, output, console or journal).
//!
//! Each message is complete on its own (the reporter and the script print
//! `Display` only); a variant that wraps a typed cause also exposes it as
//! `source()`, so callers match on the cause instead of reading the text.

use crate::backend::BackendError;
use crate::guest::GuestError;
use crate::process::Exit;
use crate::report::FailureCause;

/// Why a machine operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MachineError {
    /// A command's exit status was not what the call requires.
    #[error(
        "{machine}: {call} `{command}` {expectation} (exit status {status}){}",
        output_block(stdout, stderr)
    )]
    CommandFailed {
        /// The machine.
        machine: String,
        /// `succeed` or `fail`.
        call: &'static str,
        /// The command.
        command: String,
        /// What went wrong (`failed`, `unexpectedly succeeded`).
        expectation: &'static str,
        /// Exit status.
        status: i32,
        /// stdout.
        stdout: String,
        /// stderr.
        stderr: String,
    },
    /// A wait ran out of time.
    #[error(
        "{machine}: {what}: timed out after {seconds} seconds{}",
        block("diagnostics", diagnostics)
    )]
    Timeout {
        /// The machine.
        machine: String,
        /// What was awaited.
        what: String,
        /// The timeout.
        seconds: f64,
        /// Failed units, journal tail or console tail.
        diagnostics: String,
    },
    /// A wait ended in a state that can never succeed.
    #[error("{machine}: {what}: {reason}{}", block("diagnostics", diagnostics))]
    WaitFailed {
        /// The machine.
        machine: String,
        /// What was awaited.
        what: String,
        /// Why it cannot succeed.
        reason: WaitFailure,
        /// Failed units and journal tail.
        diagnostics: String,
    },
    /// The machine exited while something waited on it.
    #[error(
        "{machine}: {exit} while {during}{}",
        block("last console lines", console_tail)
    )]
    Died {
        /// The machine.
        machine: String,
        /// How it exited.
        exit: Exit,
        /// What was going on.
        during: String,
        /// Its last console lines.
        console_tail: String,
    },
    /// The guest channel failed.
    #[error("{machine}: {command}: {error}")]
    Guest {
        /// The machine.
        machine: String,
        /// The command.
        command: String,
        /// What failed.
        #[source]
        error: GuestError,
    },
    /// A command to run in the background could not be started.
    #[error("{machine}: {command}: could not start it detached (exit status {status}): {stderr}")]
    Detach {
        /// The machine.
        machine: String,
        /// The command.
        command: String,
        /// The exit status of the `setsid` wrapper.
        status: i32,
        /// What it printed.
        stderr: String,
    },
    /// The backend failed or lacks the operation
    /// ([`BackendError::Unsupported`]).
    #[error("{machine}: {op}: {error}")]
    Backend {
        /// The machine.
        machine: String,
        /// The operation.
        op: String,
        /// What failed.
        #[source]
        error: BackendError,
    },
    /// The node's backend cannot do what the call needs (the capability
    /// table, [`crate::backend::capability`], says why and what to do).
    #[error("{}", refusal.message(method, machine))]
    Unsupported {
        /// The machine.
        machine: String,
        /// The script method.
        method: String,
        /// The table's refusal: the backend, why not, what to do instead.
        refusal: crate::backend::capability::Refusal,
    },
    /// The machine went down by itself (or by a reboot it was not started
    /// to survive) and the script has not waited for that.
    #[error(
        "{machine} is down: {why}; as in the NixOS driver, a command does not start it again: \
         call wait_for_shutdown() and then start(), or start it with \
         start(#{{ allow_reboot: true }}) so that a reboot keeps it running"
    )]
    WentDown {
        /// The machine.
        machine: String,
        /// How it went down.
        why: String,
    },
    /// The machine is not running and cannot be started implicitly.
    #[error(
        "{machine} is not running ({state}{}): start it again with start()",
        cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
    )]
    NotRunning {
        /// The machine.
        machine: String,
        /// Its state.
        state: &'static str,
        /// How it ended, when it ended on its own.
        cause: Option<Exit>,
    },
    /// The run is being torn down (signal, global timeout, failure elsewhere).
    #[error("{machine}: cancelled: the test is being torn down")]
    Cancelled {
        /// The machine.
        machine: String,
        /// Why the run was cancelled (none when the machine's own work was
        /// shut down without the run being cancelled).
        reason: Option<crate::cancel::CancelReason>,
    },
    /// A regular expression the script gave does not compile.
    #[error("{machine}: {call}: bad regex: {error}")]
    BadRegex {
        /// The machine.
        machine: String,
        /// The script method.
        call: &'static str,
        /// Why.
        #[source]
        error: regex::Error,
    },
    /// The task that ran the operation panicked or was cancelled.
    #[error("{machine}: operation task failed: {detail}")]
    TaskFailed {
        /// The machine.
        machine: String,
        /// It panicked (else it was cancelled).
        panicked: bool,
        /// The runtime's words (the panic message).
        detail: String,
    },
    /// A command printed something its caller cannot read.
    #[error("{machine}: `{command}` printed {stdout:?}, not {expected}")]
    UnexpectedOutput {
        /// The machine.
        machine: String,
        /// The command.
        command: String,
        /// What it printed.
        stdout: String,
        /// What the caller reads (`a number of nanoseconds`).
        expected: &'static str,
    },
    /// A host-side file step of a copy failed.
    #[error("{machine}: {call}: {doing}{}: {}", path.display(), crate::errors::os_reason(error))]
    HostFile {
        /// The machine.
        machine: String,
        /// The script method (`copy_from_host`, `copy_from_machine`).
        call: &'static str,
        /// What was done with the path, as the start of a phrase
        /// (`archiving `, `extracting into `), or nothing.
        doing: &'static str,
        /// The host path.
        path: std::path::PathBuf,
        /// Why it failed.
        #[source]
        error: std::sync::Arc<std::io::Error>,
    },
    /// A guest-side step of a copy (`mkdir`, `mv`, a check) failed.
    #[error("{machine}: {call}: `{command}` failed in the guest (exit status {status}): {stderr}")]
    CopyStep {
        /// The machine.
        machine: String,
        /// The script method.
        call: &'static str,
        /// The step's command.
        command: String,
        /// Its exit status.
        status: i32,
        /// What it printed (the guest's words).
        stderr: String,
    },
    /// A step failed with only the guest's words to say why (a guest that
    /// cannot capture its screen, a bench step).
    #[error("{machine}: {message}")]
    Internal {
        /// The machine.
        machine: String,
        /// What failed.
        message: String,
    },
}

/// Why a wait can never succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitFailure {
    /// The unit failed.
    #[error("unit \"{unit}\" reached state \"failed\"")]
    UnitFailed {
        /// The unit.
        unit: String,
    },
    /// The unit is inactive and nothing will start it.
    #[error("unit \"{unit}\" is inactive and there are no pending jobs")]
    UnitInactive {
        /// The unit.
        unit: String,
    },
    /// The unit is in a state a wait does not expect.
    #[error("unit \"{unit}\" is in state \"{state}\"")]
    UnitInState {
        /// The unit.
        unit: String,
        /// Its state.
        state: String,
    },
    /// `require_unit_state`: the unit is in another state.
    #[error(
        "expected unit \"{unit}\" to be in state \"{expected}\" but it is in state \"{actual}\""
    )]
    UnitNotInState {
        /// The unit.
        unit: String,
        /// The state asked for.
        expected: String,
        /// Its state.
        actual: String,
    },
    /// systemd (of `user`, or the system's) could not be asked.
    #[error(
        "asking systemd{} failed (exit status {status}): {stderr}",
        user.as_ref().map(|u| format!(" of user {u}")).unwrap_or_default()
    )]
    SystemdUnreachable {
        /// The user whose manager was asked.
        user: Option<String>,
        /// systemctl's exit status.
        status: i32,
        /// What it printed (the guest's words).
        stderr: String,
    },
    /// `systemctl show` failed.
    #[error("systemctl show failed (exit status {status}): {stderr}")]
    SystemctlShow {
        /// Its exit status.
        status: i32,
        /// What it printed (the guest's words).
        stderr: String,
    },
}

impl MachineError {
    /// What kind of failure this is, for the run's outcome.
    pub fn cause(&self) -> FailureCause {
        match self {
            MachineError::CommandFailed { .. } => FailureCause::CommandFailed,
            MachineError::Timeout { .. } => FailureCause::Timeout,
            MachineError::WaitFailed { .. } => FailureCause::WaitFailed,
            MachineError::Died { .. }
            | MachineError::WentDown { .. }
            | MachineError::NotRunning { .. } => FailureCause::MachineDown,
            MachineError::Unsupported { .. }
            | MachineError::Backend {
                error: BackendError::Unsupported { .. },
                ..
            } => FailureCause::Unsupported,
            MachineError::Cancelled { .. } => FailureCause::Cancelled,
            MachineError::Guest { .. }
            | MachineError::Detach { .. }
            | MachineError::Backend { .. }
            | MachineError::BadRegex { .. }
            | MachineError::TaskFailed { .. }
            | MachineError::UnexpectedOutput { .. }
            | MachineError::HostFile { .. }
            | MachineError::CopyStep { .. }
            | MachineError::Internal { .. } => FailureCause::Machine,
        }
    }
}

fn block(title: &str, text: &str) -> String {
    let text = text.trim_end();
    if text.is_empty() {
        String::new()
    } else {
        let indented: Vec<String> = text.lines().map(|l| format!("    {l}")).collect();
        format!("\n  {title}:\n{}", indented.join("\n"))
    }
}

fn output_block(stdout: &str, stderr: &str) -> String {
    format!("{}{}", block("stdout", stdout), block("stderr", stderr))
}
