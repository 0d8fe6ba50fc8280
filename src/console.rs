//! [`ConsoleLog`]: a machine's console (serial) output, drained continuously by
//! the backend, kept for `get_console_log`, `wait_for_console_text` and
//! failure reports, and forwarded live to the reporter.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Bytes of console text kept per machine; older text is dropped.
const MAX_KEPT: usize = 32 << 20;

/// A machine's console output. Cheap to clone.
#[derive(Clone)]
pub struct ConsoleLog {
    inner: Arc<Mutex<Inner>>,
    /// Bumped on every line so waiters can wake up.
    changed: watch::Sender<u64>,
    forward: Arc<dyn Fn(&str) + Send + Sync>,
}

struct Inner {
    text: String,
    /// Bytes dropped from the front so far (offsets stay absolute).
    dropped: usize,
}

impl ConsoleLog {
    /// A log that also hands every line to `forward` (the reporter).
    pub fn new(forward: Arc<dyn Fn(&str) + Send + Sync>) -> ConsoleLog {
        ConsoleLog {
            inner: Arc::new(Mutex::new(Inner {
                text: String::new(),
                dropped: 0,
            })),
            changed: watch::channel(0).0,
            forward,
        }
    }

    /// Appends one line (without its newline).
    pub fn push_line(&self, line: &str) {
        let line = strip_ansi(line);
        {
            let mut g = self.inner.lock().expect("console lock poisoned");
            g.text.push_str(&line);
            g.text.push('\n');
            if g.text.len() > MAX_KEPT {
                let cut = g.text.len() - MAX_KEPT / 2;
                let cut = (cut..g.text.len())
                    .find(|&i| g.text.is_char_boundary(i))
                    .unwrap_or(g.text.len());
                g.text.drain(..cut);
                g.dropped += cut;
            }
        }
        (self.forward)(&line);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Everything kept so far.
    pub fn text(&self) -> String {
        self.inner
            .lock()
            .expect("console lock poisoned")
            .text
            .clone()
    }

    /// The absolute offset of the end of the log (for "text after now").
    pub fn end_offset(&self) -> usize {
        let g = self.inner.lock().expect("console lock poisoned");
        g.dropped + g.text.len()
    }

    /// Text from absolute offset `from` on.
    pub fn text_since(&self, from: usize) -> String {
        let g = self.inner.lock().expect("console lock poisoned");
        let start = from.saturating_sub(g.dropped).min(g.text.len());
        let start = (start..=g.text.len())
            .find(|&i| g.text.is_char_boundary(i))
            .unwrap_or(g.text.len());
        g.text[start..].to_owned()
    }

    /// The last `n` lines.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let g = self.inner.lock().expect("console lock poisoned");
        let lines: Vec<&str> = g.text.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// A receiver that changes whenever a line arrives.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Drops ANSI escape sequences and carriage returns so logs and regexes see
/// plain text.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_lines_strips_colour_and_tracks_offsets() {
        let log = ConsoleLog::new(Arc::new(|_| {}));
        log.push_line("\u{1b}[0;32m  OK  \u{1b}[0m] Started nginx\r");
        let off = log.end_offset();
        log.push_line("second");
        assert_eq!(log.text(), "  OK  ] Started nginx\nsecond\n");
        assert_eq!(log.text_since(off), "second\n");
        assert_eq!(log.last_lines(1), vec!["second"]);
    }
}
