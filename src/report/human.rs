//! The human log on stderr: nested sections with durations, like the NixOS
//! driver; colour only when asked (on a terminal).

use std::io::Write;

use super::events::{Event, EventKind};
use super::progress::BootProgress;

/// Renders events as text on stderr.
pub struct HumanReporter {
    colour: bool,
    show_console: bool,
    /// Boot progress lines, on a terminal only.
    progress: Option<BootProgress>,
}

impl HumanReporter {
    /// A renderer.
    pub fn new(colour: bool, show_console: bool) -> Self {
        HumanReporter {
            colour,
            show_console,
            progress: None,
        }
    }

    /// Also shows boot progress (stderr must be a terminal).
    pub fn with_progress(mut self, progress: BootProgress) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Turns live console lines on or off (`serial_stdout_on`/`_off`).
    pub fn set_show_console(&mut self, show: bool) {
        self.show_console = show;
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.colour {
            format!("\u{1b}[{code}m{s}\u{1b}[0m")
        } else {
            s.to_owned()
        }
    }

    /// Renders one event (or nothing).
    pub fn handle(&mut self, event: &Event) {
        let text = self.render(event);
        if let Some(progress) = self.progress.as_mut() {
            progress.handle(event, text.as_deref());
        } else if let Some(text) = text {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        }
    }

    /// The text for one event.
    pub fn render(&self, event: &Event) -> Option<String> {
        let indent = |d: usize| "  ".repeat(d);
        let who = |m: &Option<String>| m.as_ref().map(|m| format!("{m}: ")).unwrap_or_default();
        Some(match &event.kind {
            EventKind::TestStarted { name, nodes } => self.paint(
                "1",
                &format!("attest: test {name} (nodes: {})", nodes.join(", ")),
            ),
            EventKind::SectionStarted {
                name,
                machine,
                subtest,
                depth,
                ..
            } => {
                let label = if *subtest {
                    self.paint("1", &format!("subtest: {name}"))
                } else {
                    format!("{}{name}", who(machine))
                };
                format!("{}{label}", indent(*depth))
            }
            EventKind::SectionFinished {
                name,
                depth,
                duration,
                error,
                ..
            } => match error {
                None => format!(
                    "{}{}",
                    indent(*depth),
                    self.paint(
                        "2",
                        &format!("(finished: {name}, in {duration:.2} seconds)")
                    )
                ),
                Some(_) => format!(
                    "{}{}",
                    indent(*depth),
                    self.paint(
                        "31",
                        &format!("(failed: {name}, after {duration:.2} seconds)")
                    )
                ),
            },
            EventKind::Log {
                machine,
                message,
                depth,
            } => format!("{}{}{message}", indent(*depth), who(machine)),
            EventKind::CommandOutput {
                machine,
                stream,
                line,
                depth,
            } => format!(
                "{}{} {line}",
                indent(*depth),
                self.paint("2", &format!("{machine} {stream}>"))
            ),
            EventKind::Console { machine, line } => {
                if !self.show_console {
                    return None;
                }
                format!("{} {line}", self.paint("36", &format!("{machine} #")))
            }
            EventKind::MachineState {
                machine,
                state,
                detail,
            } => match detail {
                // A crash's detail is its whole error; the failure summary
                // shows the rest (console lines) once.
                Some(d) => {
                    let first = d.lines().next().unwrap_or("");
                    let first = first
                        .strip_prefix(machine.as_str())
                        .and_then(|r| r.strip_prefix(": "))
                        .unwrap_or(first);
                    format!("{machine}: {state} ({first})")
                }
                None => format!("{machine}: {state}"),
            },
            EventKind::TestFinished {
                outcome,
                error,
                duration,
                ..
            } => {
                let mut s = match outcome.as_str() {
                    "passed" => {
                        self.paint("1;32", &format!("test passed in {duration:.2} seconds"))
                    }
                    "closed" => format!("REPL closed after {duration:.2} seconds"),
                    o => self.paint("1;31", &format!("test {o} after {duration:.2} seconds")),
                };
                if let Some(e) = error {
                    s = format!("{}\n{s}", self.paint("31", &format!("error: {e}")));
                }
                s
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::events::at_start as ev;

    #[test]
    fn sections_render_nested_with_durations() {
        let h = HumanReporter::new(false, true);
        let lines: Vec<String> = [
            ev(EventKind::SectionStarted {
                id: 1,
                parent: None,
                name: "web".into(),
                machine: None,
                subtest: true,
                depth: 0,
            }),
            ev(EventKind::SectionStarted {
                id: 2,
                parent: Some(1),
                name: "waiting for unit nginx.service".into(),
                machine: Some("server".into()),
                subtest: false,
                depth: 1,
            }),
            ev(EventKind::SectionFinished {
                id: 2,
                name: "waiting for unit nginx.service".into(),
                machine: Some("server".into()),
                subtest: false,
                depth: 1,
                duration: 1.234,
                error: None,
            }),
            ev(EventKind::Console {
                machine: "server".into(),
                line: "[  OK  ] Started nginx".into(),
            }),
            ev(EventKind::TestFinished {
                outcome: "failed".into(),
                error: Some("boom".into()),
                cause: None,
                duration: 3.0,
            }),
        ]
        .iter()
        .filter_map(|e| h.render(e))
        .collect();
        insta::assert_snapshot!(lines.join("\n"), @r"
        subtest: web
          server: waiting for unit nginx.service
          (finished: waiting for unit nginx.service, in 1.23 seconds)
        server # [  OK  ] Started nginx
        error: boom
        test failed after 3.00 seconds
        ");
    }
}
