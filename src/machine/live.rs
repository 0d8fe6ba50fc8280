//! `--live-output`: the lines guest commands write, as `CommandOutput`
//! events. [`LiveLines`] cuts the agent's chunks into lines per stream.

use crate::report::{EventKind, Reporter};

/// Splits one command's output chunks into lines and reports each.
pub(super) struct LiveLines<'a> {
    reporter: &'a Reporter,
    machine: &'a str,
    /// Partial last lines of stdout and stderr.
    partial: [Vec<u8>; 2],
}

const STREAMS: [&str; 2] = ["stdout", "stderr"];

impl<'a> LiveLines<'a> {
    pub(super) fn new(reporter: &'a Reporter, machine: &'a str) -> Self {
        LiveLines {
            reporter,
            machine,
            partial: [Vec::new(), Vec::new()],
        }
    }

    /// A chunk of stdout (`stderr` false) or stderr.
    pub(super) fn chunk(&mut self, stderr: bool, bytes: &[u8]) {
        let i = stderr as usize;
        self.partial[i].extend_from_slice(bytes);
        while let Some(nl) = self.partial[i].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial[i].drain(..=nl).collect();
            self.emit(i, &line[..nl]);
        }
    }

    fn emit(&self, i: usize, line: &[u8]) {
        self.reporter.emit(EventKind::CommandOutput {
            machine: self.machine.to_owned(),
            stream: STREAMS[i].to_owned(),
            line: String::from_utf8_lossy(line).into_owned(),
            // Inside the section of the script's call, which runs this
            // command on a runtime worker.
            depth: crate::report::call_depth(),
        });
    }
}

impl Drop for LiveLines<'_> {
    /// Reports what is left without a newline at the command's end.
    fn drop(&mut self) {
        for i in 0..2 {
            if !self.partial[i].is_empty() {
                let rest = std::mem::take(&mut self.partial[i]);
                self.emit(i, &rest);
            }
        }
    }
}
