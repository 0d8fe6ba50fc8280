//! Reporting: [`events`] are the facts a run produces; [`Reporter`] fans them
//! out to the human log on stderr ([`human`]), the JSON event log and the
//! JUnit aggregator ([`junit`]). Nothing else writes to the user.

pub mod events;
pub mod failure;
pub mod human;
pub mod junit;
pub mod progress;

use std::cell::RefCell;
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

/// An open section, as the parent of sections opened on another thread
/// (`wait_all` runs each machine's closure on its own thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionRef {
    id: u64,
    depth: usize,
}

thread_local! {
    /// The sections this thread opened, innermost last: the parent of the
    /// next one this thread opens. The first entry may be a parent handed
    /// over from another thread ([`Reporter::within`]).
    static SECTION_STACK: RefCell<Vec<SectionRef>> = const { RefCell::new(Vec::new()) };
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

    /// A log line, attributed to a machine or to the test.
    pub fn log(&self, machine: Option<&str>, message: impl Into<String>) {
        self.emit(EventKind::Log {
            machine: machine.map(str::to_owned),
            message: message.into(),
            depth: current_depth(),
        });
    }

    /// Runs `f` inside a named section (nested in the current thread's open
    /// section). `subtest` sections become JUnit test cases.
    pub fn section<T, E: std::fmt::Display>(
        &self,
        name: &str,
        machine: Option<&str>,
        subtest: bool,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let id = self.next_section.fetch_add(1, Ordering::Relaxed);
        let parent = current_section();
        let depth = parent.map_or(0, |p| p.depth + 1);
        self.emit(EventKind::SectionStarted {
            id,
            parent: parent.map(|p| p.id),
            name: name.to_owned(),
            machine: machine.map(str::to_owned),
            subtest,
            depth,
        });
        SECTION_STACK.with(|s| s.borrow_mut().push(SectionRef { id, depth }));
        let started = Instant::now();
        let result = f();
        SECTION_STACK.with(|s| s.borrow_mut().pop());
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

    /// The innermost section this thread is in, to hand to [`Reporter::within`]
    /// on another thread.
    pub fn current_section(&self) -> Option<SectionRef> {
        current_section()
    }

    /// Runs `f` (on a thread of its own) with the sections it opens nested
    /// in `parent`, the section the work was started from.
    pub fn within<T>(&self, parent: Option<SectionRef>, f: impl FnOnce() -> T) -> T {
        let saved = SECTION_STACK
            .with(|s| std::mem::replace(&mut *s.borrow_mut(), parent.into_iter().collect()));
        let result = f();
        SECTION_STACK.with(|s| *s.borrow_mut() = saved);
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

fn current_section() -> Option<SectionRef> {
    SECTION_STACK.with(|s| s.borrow().last().copied())
}

/// Nesting depth of a line logged now on this thread: inside its innermost
/// open section.
pub fn current_depth() -> usize {
    current_section().map_or(0, |p| p.depth + 1)
}
