//! One flow of script work: the script itself, or one `wait_all` closure on
//! a thread of its own. A flow keeps the sections it has open (the parent of
//! what it reports next) and the checks of its open `during` blocks. It is
//! the Rhai evaluation's tag, so a binding reads it from its call's context
//! ([`Flow::of`]): nesting follows the script's calls, not the thread.

use std::sync::{Arc, Mutex};

use rhai::{Dynamic, NativeCallContext};

use super::common::R;
use crate::report::{Reporter, SectionRef};

/// The check of an open `during` block, run before each machine command.
pub(super) type DueCheck = Arc<dyn Fn(&NativeCallContext) -> R<()> + Send + Sync>;

/// A flow's state; clones share it.
#[derive(Clone, Default)]
pub struct Flow {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Open sections, innermost last; the first may be the parent the flow
    /// was started in ([`Flow::nested_in`]).
    sections: Vec<SectionRef>,
    /// Checks of the open `during` blocks, innermost last.
    checks: Vec<DueCheck>,
}

impl Flow {
    /// A flow whose sections nest in `parent` (the section `wait_all` runs
    /// in); it has no open `during` block.
    pub fn nested_in(parent: Option<SectionRef>) -> Flow {
        let flow = Flow::default();
        flow.lock().sections.extend(parent);
        flow
    }

    /// The flow a native call belongs to. Every evaluation of the script
    /// engine has one as its tag ([`super::engine`] sets the default).
    pub fn of(nc: &NativeCallContext) -> Flow {
        nc.tag()
            .and_then(|t| t.read_lock::<Flow>().map(|f| f.clone()))
            .expect("every evaluation of the script engine is tagged with its flow")
    }

    /// The flow as an evaluation's tag.
    pub fn tag(&self) -> Dynamic {
        Dynamic::from(self.clone())
    }

    /// The innermost open section.
    pub fn section(&self) -> Option<SectionRef> {
        self.lock().sections.last().copied()
    }

    /// Runs `f` inside a section nested in the flow's innermost one.
    pub fn in_section<T, E: std::fmt::Display>(
        &self,
        reporter: &Reporter,
        name: &str,
        machine: Option<&str>,
        subtest: bool,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        reporter.section(self.section(), name, machine, subtest, |me| {
            self.lock().sections.push(me);
            let result = f();
            self.lock().sections.pop();
            result
        })
    }

    /// A log line inside the flow's innermost section.
    pub fn log(&self, reporter: &Reporter, machine: Option<&str>, message: impl Into<String>) {
        reporter.log_in(self.section(), machine, message);
    }

    /// Runs `f` with `check` run before each machine command (a `during`
    /// block).
    pub(super) fn during<T>(&self, check: DueCheck, f: impl FnOnce() -> T) -> T {
        self.lock().checks.push(check);
        let result = f();
        self.lock().checks.pop();
        result
    }

    /// Runs the checks of the open `during` blocks (each decides whether it
    /// is due).
    pub(super) fn check_due(&self, nc: &NativeCallContext) -> R<()> {
        let checks = self.lock().checks.clone();
        checks.iter().try_for_each(|check| check(nc))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
