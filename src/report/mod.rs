//! Reporting: [`events`] are the facts a run produces; [`Reporter`] fans them
//! out to the human log on stderr ([`human`]), the JSON event log and the
//! JUnit aggregator ([`junit`]). Nothing else writes to the user.

pub mod events;
pub mod failure;
pub mod human;
pub mod junit;
pub mod progress;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub use events::{Event, EventKind, FailureCause};

/// Options for the reporters.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Print console lines of machines live.
    pub show_console: bool,
    /// Colour the human log (only when stderr is a terminal).
    pub colour: bool,
    /// Show boot progress in place (only when stderr is a terminal).
    pub progress: bool,
    /// Write the JSON event log here.
    pub log_json: Option<std::path::PathBuf>,
    /// Write JUnit XML here.
    pub junit: Option<std::path::PathBuf>,
    /// Emit the lines guest commands write as `CommandOutput` events (shown
    /// in the human log, kept in the JSON log).
    pub live_output: bool,
}

/// A report file that cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the {what} file {}: {}", path.display(), crate::errors::os_reason(reason))]
pub struct ReportError {
    /// `JSON event log` or `JUnit report`.
    pub what: &'static str,
    /// The file.
    pub path: std::path::PathBuf,
    /// The cause.
    pub reason: std::io::Error,
}

/// The fan-out of events. Cheap to clone.
#[derive(Clone)]
pub struct Reporter {
    inner: Arc<Mutex<State>>,
    start: Instant,
    live_output: bool,
    next_section: Arc<AtomicU64>,
}

struct State {
    human: human::HumanReporter,
    json: Option<std::io::BufWriter<std::fs::File>>,
    junit: junit::JunitAggregator,
    junit_path: Option<std::path::PathBuf>,
    /// Machines an operation failed on or that crashed, first first.
    failed_machines: Vec<String>,
}

/// An open section: the parent of the lines and sections reported inside
/// it. Whoever opens sections keeps its own (the script engine keeps one
/// stack per flow of work, see `script::flow`) and passes the parent
/// explicitly; a line or section without one is at the top level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionRef {
    id: u64,
    depth: usize,
}

/// The nesting depth of what is reported inside `parent`.
fn depth_in(parent: Option<SectionRef>) -> usize {
    parent.map_or(0, |p| p.depth + 1)
}

tokio::task_local! {
    /// The section a machine call runs in, for what it reports from a
    /// runtime worker (its live output lines), which has no flow of its own.
    static CALL_SECTION: Option<SectionRef>;
}

/// Runs `fut` as the work of `section`: what it reports through
/// [`call_depth`] nests there.
pub async fn within<F: std::future::Future>(section: Option<SectionRef>, fut: F) -> F::Output {
    CALL_SECTION.scope(section, fut).await
}

/// The depth of a line reported by the machine call running now (inside
/// [`within`]); the top level elsewhere.
pub fn call_depth() -> usize {
    CALL_SECTION.try_with(|s| depth_in(*s)).unwrap_or(0)
}

impl Reporter {
    /// A reporter for the test `name`. Creates the report files at once, so
    /// an unwritable one is an error before anything boots.
    pub fn new(name: &str, opts: &ReportOptions) -> Result<Reporter, ReportError> {
        let json = match &opts.log_json {
            Some(p) => Some(std::io::BufWriter::new(create(p, "JSON event log")?)),
            None => None,
        };
        if let Some(p) = &opts.junit {
            create(p, "JUnit report")?;
        }
        Ok(Reporter {
            inner: Arc::new(Mutex::new(State {
                human: {
                    let h = human::HumanReporter::new(opts.colour, opts.show_console);
                    if opts.progress {
                        h.with_progress(progress::BootProgress::stderr())
                    } else {
                        h
                    }
                },
                json,
                junit: junit::JunitAggregator::new(name),
                junit_path: opts.junit.clone(),
                failed_machines: Vec::new(),
            })),
            start: Instant::now(),
            live_output: opts.live_output,
            next_section: Arc::new(AtomicU64::new(1)),
        })
    }

    /// Emits one event to every reporter.
    pub fn emit(&self, kind: EventKind) {
        let event = Event {
            timestamp: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            elapsed: self.start.elapsed().as_secs_f64(),
            kind,
        };
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.human.handle(&event);
        if let Some(json) = g.json.as_mut() {
            if serde_json::to_writer(&mut *json, &event).is_ok() {
                let _ = json.write_all(b"\n");
                let _ = json.flush();
            }
        }
        g.junit.handle(&event);
        let failed = match &event.kind {
            EventKind::SectionFinished {
                machine: Some(m),
                error: Some(_),
                ..
            } => Some(m),
            EventKind::MachineState { machine, state, .. } if state == "crashed" => Some(machine),
            _ => None,
        };
        if let Some(m) = failed {
            if !g.failed_machines.contains(m) {
                g.failed_machines.push(m.clone());
            }
        }
    }

    /// Machines an operation failed on or that crashed so far, in order.
    pub fn failed_machines(&self) -> Vec<String> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.failed_machines.clone()
    }

    /// Whether guest commands' lines are reported (`--live-output`).
    pub fn live_output(&self) -> bool {
        self.live_output
    }

    /// A log line at the top level, attributed to a machine or to the test.
    pub fn log(&self, machine: Option<&str>, message: impl Into<String>) {
        self.log_in(None, machine, message);
    }

    /// A log line inside the section `parent`.
    pub fn log_in(
        &self,
        parent: Option<SectionRef>,
        machine: Option<&str>,
        message: impl Into<String>,
    ) {
        self.emit(EventKind::Log {
            machine: machine.map(str::to_owned),
            message: message.into(),
            depth: depth_in(parent),
        });
    }

    /// Runs `f` inside a named section nested in `parent`; `f` gets the new
    /// section, the parent of what it reports. `subtest` sections become
    /// JUnit test cases.
    pub fn section<T, E: std::fmt::Display>(
        &self,
        parent: Option<SectionRef>,
        name: &str,
        machine: Option<&str>,
        subtest: bool,
        f: impl FnOnce(SectionRef) -> Result<T, E>,
    ) -> Result<T, E> {
        let id = self.next_section.fetch_add(1, Ordering::Relaxed);
        let depth = depth_in(parent);
        self.emit(EventKind::SectionStarted {
            id,
            parent: parent.map(|p| p.id),
            name: name.to_owned(),
            machine: machine.map(str::to_owned),
            subtest,
            depth,
        });
        let started = Instant::now();
        let result = f(SectionRef { id, depth });
        self.emit(EventKind::SectionFinished {
            id,
            name: name.to_owned(),
            machine: machine.map(str::to_owned),
            subtest,
            depth,
            duration: started.elapsed().as_secs_f64(),
            error: result.as_ref().err().map(|e| e.to_string()),
        });
        result
    }

    /// Prints machines' console lines live on stderr, or stops (NixOS
    /// `serial_stdout_on`/`serial_stdout_off`). The JSON log keeps them.
    pub fn set_show_console(&self, show: bool) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.human.set_show_console(show);
    }

    /// Time since the reporter was made.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Writes the JUnit file, if asked for.
    pub fn finish(&self) -> Result<(), ReportError> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = &g.junit_path {
            let error = |reason| ReportError {
                what: "JUnit report",
                path: path.clone(),
                reason,
            };
            let xml = g
                .junit
                .to_xml()
                .map_err(|e| error(std::io::Error::other(e)))?;
            std::fs::write(path, xml).map_err(error)?;
        }
        Ok(())
    }
}

fn create(path: &std::path::Path, what: &'static str) -> Result<std::fs::File, ReportError> {
    std::fs::File::create(path).map_err(|reason| ReportError {
        what,
        path: path.to_owned(),
        reason,
    })
}
