//! The events of a run: the contract of `--log-json` (one JSON object a line).
//!
//! Order: `TestStarted`, then any mix of `Log`, `Console`, `CommandOutput`,
//! `MachineState` and properly nested `SectionStarted`/`SectionFinished`
//! pairs (per thread), then one `TestFinished`.

use serde::Serialize;

/// One fact, stamped.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
    /// Seconds since the run started.
    pub elapsed: f64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The run began.
    TestStarted {
        /// Test name.
        name: String,
        /// Node names.
        nodes: Vec<String>,
    },
    /// A section (a machine operation or a subtest) began.
    SectionStarted {
        /// Unique id.
        id: u64,
        /// Enclosing section.
        parent: Option<u64>,
        /// What it does.
        name: String,
        /// The machine it acts on.
        machine: Option<String>,
        /// Whether it is a subtest (a JUnit test case).
        subtest: bool,
        /// Nesting depth.
        depth: usize,
    },
    /// A section ended.
    SectionFinished {
        /// The id from `SectionStarted`.
        id: u64,
        /// What it did.
        name: String,
        /// The machine it acted on.
        machine: Option<String>,
        /// Whether it is a subtest.
        subtest: bool,
        /// Nesting depth.
        depth: usize,
        /// Seconds it took.
        duration: f64,
        /// Why it failed, if it did.
        error: Option<String>,
    },
    /// A message from the script or the driver.
    Log {
        /// The machine it concerns.
        machine: Option<String>,
        /// The text.
        message: String,
        /// Nesting depth.
        depth: usize,
    },
    /// A line of a machine's console.
    Console {
        /// The machine.
        machine: String,
        /// The line.
        line: String,
    },
    /// A line a guest command wrote, as it arrives (`--live-output`). With
    /// the agent the lines come while the command runs; with the bash
    /// protocol they come when it has ended (its output is captured in the
    /// guest). A last line without a newline comes at the command's end.
    CommandOutput {
        /// The machine.
        machine: String,
        /// `stdout` or `stderr`.
        stream: String,
        /// The line, without its newline (invalid UTF-8 replaced).
        line: String,
        /// Nesting depth.
        depth: usize,
    },
    /// A machine changed state.
    MachineState {
        /// The machine.
        machine: String,
        /// `booting`, `up`, `off`, `crashed`, …
        state: String,
        /// Details (exit status, accelerator, …).
        detail: Option<String>,
    },
    /// The run ended.
    TestFinished {
        /// `passed`, `failed`, `error`, or `closed` (a REPL session ended).
        outcome: String,
        /// The error that ended it.
        error: Option<String>,
        /// What kind of failure ended it, read from the error's type.
        #[serde(skip_serializing_if = "Option::is_none")]
        cause: Option<FailureCause>,
        /// Seconds the run took.
        duration: f64,
    },
}

/// What kind of failure ended a run: the typed error that left the script,
/// as JSON (`"cause": "command-failed"`) and as the JUnit failure's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureCause {
    /// A command's exit status was not what the call requires.
    CommandFailed,
    /// A wait ran out of time.
    Timeout,
    /// A wait ended in a state that can never succeed.
    WaitFailed,
    /// A machine died, went down by itself, or was not running.
    MachineDown,
    /// The node's backend lacks the operation.
    Unsupported,
    /// The run was cancelled (signal, global timeout) while a call waited.
    Cancelled,
    /// The guest channel or the backend failed.
    Machine,
    /// The script's own error (`throw`, an assertion, a bad argument).
    Script,
}

impl FailureCause {
    /// The name in the JSON event log.
    pub fn name(self) -> &'static str {
        match self {
            FailureCause::CommandFailed => "command-failed",
            FailureCause::Timeout => "timeout",
            FailureCause::WaitFailed => "wait-failed",
            FailureCause::MachineDown => "machine-down",
            FailureCause::Unsupported => "unsupported",
            FailureCause::Cancelled => "cancelled",
            FailureCause::Machine => "machine",
            FailureCause::Script => "script",
        }
    }
}

/// An event at time zero, for renderer tests.
#[cfg(test)]
pub(crate) fn at_start(kind: EventKind) -> Event {
    Event {
        timestamp: 0.0,
        elapsed: 0.0,
        kind,
    }
}
