//! [`BootProgress`]: on a terminal, one line per booting machine with the
//! time its boot has taken and its last console line, redrawn in place
//! (indicatif) while the log scrolls above it. QEMU under TCG boots for a
//! minute; this shows it is alive. Not used when stderr is not a terminal:
//! there the log stays plain lines.

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::events::{Event, EventKind};

/// How often the elapsed time is redrawn without new console lines.
const TICK: Duration = Duration::from_millis(250);

/// The progress lines, and the log text printed above them.
pub struct BootProgress {
    multi: MultiProgress,
    style: ProgressStyle,
    /// Booting machines by name.
    bars: BTreeMap<String, ProgressBar>,
    /// Writes a log line while no machine boots. indicatif pads every line
    /// it prints to the terminal width; only lines printed above progress
    /// lines need that.
    plain: Box<dyn Fn(&str) + Send>,
}

impl BootProgress {
    /// Progress on stderr.
    pub fn stderr() -> Self {
        Self::new(
            ProgressDrawTarget::stderr(),
            Box::new(|text| {
                use std::io::Write;
                // A failed write to stderr has nowhere to be reported.
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }),
        )
    }

    /// Progress drawn on `target`; `plain` writes log lines while nothing boots.
    pub fn new(target: ProgressDrawTarget, plain: Box<dyn Fn(&str) + Send>) -> Self {
        let style =
            ProgressStyle::with_template("{spinner} {prefix}: booting {elapsed:>3} {wide_msg}")
                .expect("the template is valid");
        BootProgress {
            multi: MultiProgress::with_draw_target(target),
            style,
            bars: BTreeMap::new(),
            plain,
        }
    }

    /// Prints `text` (the event's log line, if any) above the progress lines
    /// and updates them: a machine gets a line when it starts booting, loses
    /// it on its next state, and shows its last console line meanwhile.
    pub fn handle(&mut self, event: &Event, text: Option<&str>) {
        match &event.kind {
            EventKind::MachineState { machine, state, .. } => {
                if let Some(bar) = self.bars.remove(machine) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                self.print(text);
                if state == "booting" {
                    let bar = self
                        .multi
                        .add(ProgressBar::new_spinner().with_style(self.style.clone()));
                    bar.set_prefix(machine.clone());
                    bar.enable_steady_tick(TICK);
                    self.bars.insert(machine.clone(), bar);
                }
            }
            EventKind::Console { machine, line } => {
                self.print(text);
                if let Some(bar) = self.bars.get(machine) {
                    bar.set_message(line.trim().to_owned());
                }
            }
            EventKind::TestFinished { .. } => {
                for (_, bar) in std::mem::take(&mut self.bars) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                self.print(text);
            }
            _ => self.print(text),
        }
    }

    fn print(&self, text: Option<&str>) {
        match text {
            Some(text) if self.bars.is_empty() => (self.plain)(text),
            // A failed write to stderr has nowhere to be reported.
            Some(text) => drop(self.multi.println(text)),
            None => {}
        }
    }
}

impl Drop for BootProgress {
    fn drop(&mut self) {
        for bar in self.bars.values() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::events::at_start as ev;
    use indicatif::{InMemoryTerm, TermLike};

    fn state(machine: &str, state: &str) -> Event {
        ev(EventKind::MachineState {
            machine: machine.into(),
            state: state.into(),
            detail: None,
        })
    }

    fn console(machine: &str, line: &str) -> Event {
        ev(EventKind::Console {
            machine: machine.into(),
            line: line.into(),
        })
    }

    #[test]
    fn a_booting_machine_shows_elapsed_time_and_its_last_console_line_in_place() {
        let term = InMemoryTerm::new(10, 60);
        let plain = term.clone();
        let mut p = BootProgress::new(
            ProgressDrawTarget::term_like(Box::new(term.clone())),
            Box::new(move |text| {
                for line in text.lines() {
                    plain.write_line(line).unwrap();
                }
            }),
        );
        p.handle(&state("server", "booting"), Some("server: booting"));
        p.handle(&console("server", "Booting the kernel"), None);
        p.handle(
            &console(
                "server",
                "  Starting a very long unit name that does not fit in sixty columns at all",
            ),
            None,
        );
        p.handle(&state("client", "booting"), Some("client: booting"));
        std::thread::sleep(Duration::from_millis(1100));
        p.handle(&console("client", "Welcome"), Some("client # Welcome"));
        let screen = term.contents();
        let lines: Vec<&str> = screen.lines().collect();
        assert_eq!(lines[0], "server: booting", "{screen}");
        assert_eq!(lines[1], "client: booting", "{screen}");
        assert_eq!(lines[2], "client # Welcome", "{screen}");
        // One line per machine, below the log, cut to the terminal width.
        assert!(
            lines[3].contains("server: booting  1s Starting a very long unit"),
            "{screen}"
        );
        assert!(lines[3].chars().count() <= 60, "{screen}");
        assert!(!screen.contains("Booting the kernel"), "{screen}");
        assert!(lines[4].contains("client: booting  1s Welcome"), "{screen}");
        assert_eq!(lines.len(), 5, "{screen}");

        p.handle(&state("server", "up"), Some("server: up"));
        let screen = term.contents();
        let lines: Vec<&str> = screen.lines().collect();
        assert_eq!(lines[3], "server: up", "{screen}");
        assert!(lines[4].contains("client: booting"), "{screen}");
        assert_eq!(lines.len(), 5, "{screen}");

        p.handle(
            &ev(EventKind::TestFinished {
                outcome: "passed".into(),
                error: None,
                cause: None,
                duration: 1.0,
            }),
            Some("test passed"),
        );
        let screen = term.contents();
        assert!(!screen.contains("booting "), "{screen}");
        assert!(screen.ends_with("test passed"), "{screen}");
    }
}
