//! Waits answered in the guest: one request runs a check again and again
//! until its status meets the condition or the time is up. Under TCG a
//! check is a chain of forks competing with the boot it waits for, so the
//! next try comes only when what it looks at may have changed or when the
//! fallback pause passed; the pause doubles while nothing happens, and is
//! never shorter than the last try took. A unit's wait hears it from
//! systemd itself (its D-Bus signals, [`super::unit_signals`]) and tries
//! at once; other waits, and unit waits where the signals are out of
//! reach, watch directory entries through inotify (a unit's `invocation:`
//! link in `/run/systemd/units`, the file a `wait_for_file` wants).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::command::{drain, frame, run_once, Out};
use super::sys::{self, PollFd, POLLIN};
use super::unit_signals::UnitSignals;
use super::wire::{Exec, Exit, Retry, Watch, AGAIN, EXIT, STDOUT};
use super::Registry;

/// The pause of a wait that hears the unit's signals: they say when to
/// try; this only covers what they do not (a unit waiting for other jobs,
/// which `wait_for_unit` also looks at).
const SIGNALLED_PAUSE: Duration = Duration::from_secs(2);

/// How often a pause looks whether the host gave up (a `KILL` removes the
/// request from the registry); the running try itself is killed at once.
const STOP_TICK: Duration = Duration::from_millis(50);

/// Runs `exec` until `retry` is met, `retry.within_ms` passed or the host
/// sent `KILL`; sends the last try's output and exit.
pub fn run(id: u32, exec: &Exec, retry: Retry, watch: &[Watch], out: Out, registry: Registry) {
    let deadline = Instant::now() + Duration::from_millis(retry.within_ms);
    let first = Duration::from_millis(retry.first_pause_ms);
    let longest = Duration::from_millis(retry.max_pause_ms);
    let mut pause = first;
    // Between tries the entry is 0: a KILL removes it, which ends the loop.
    let stopped = || !registry.lock().expect("registry").contains_key(&id);
    let mut watcher = Watcher::new(watch);
    loop {
        // Armed before the try: a change while it runs wakes the next one.
        watcher.arm();
        let cost = match watcher.verdict(Instant::now() >= deadline) {
            Verdict::Answer(text) => {
                registry.lock().expect("registry").remove(&id);
                let exit = Exit {
                    status: 0,
                    signal: 0,
                    timed_out: false,
                };
                let _ = out.send(frame(STDOUT, id, text.as_bytes()));
                let _ = out.send(frame(EXIT, id, &exit.encode()));
                return;
            }
            // The try would only say so too: none runs.
            Verdict::Pending => Duration::ZERO,
            Verdict::Try => {
                let started = Instant::now();
                let Some((ended, pipes)) = run_once(id, exec, None, &out, &registry) else {
                    return;
                };
                let cost = started.elapsed();
                if retry.met_by(ended.status) || stopped() || Instant::now() >= deadline {
                    registry.lock().expect("registry").remove(&id);
                    let _ = out.send(frame(EXIT, id, &ended.encode()));
                    drain(pipes, id, &out);
                    return;
                }
                let drained = out.clone();
                std::thread::spawn(move || drain(pipes, id, &drained));
                if out.send(frame(AGAIN, id, &[])).is_err() {
                    return;
                }
                cost
            }
        };
        // The guest is idle at least as long as the try took, whatever
        // happens: a wait never takes more than half of the CPU.
        let now = Instant::now();
        let earliest = now + cost;
        let pause_now = match watcher.hears_unit() {
            true => SIGNALLED_PAUSE,
            false => pause,
        };
        let fallback = now + pause_now.max(cost);
        let mut changed = false;
        loop {
            if stopped() {
                return;
            }
            let now = Instant::now();
            let wake = if changed { earliest } else { fallback };
            if now >= wake.min(deadline) {
                break;
            }
            let left = wake.min(deadline) - now;
            match watcher.changed_within(left.min(STOP_TICK)) {
                Change::None => {}
                Change::Maybe => changed = true,
                // A signal naming the unit comes once per change of it:
                // answering it at once costs one try.
                Change::Unit => {
                    changed = true;
                    break;
                }
            }
        }
        // A change starts a new sequence of short pauses: one state change
        // is often followed by the next (a unit activating, then active).
        pause = if changed {
            first
        } else {
            (pause * 2).min(longest)
        };
    }
}

/// What a wait does next, from what the manager says of its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict<'a> {
    /// Active, and the host gave the answer for that ([`Watch::Unit`]):
    /// sent without a try.
    Answer(&'a str),
    /// Still on its way (activating, or inactive with a job): a try
    /// would only say so.
    Pending,
    /// Run the try: no signals, or a state the probe judges (failed,
    /// inactive without a job of its own, active without an answer).
    Try,
}

/// What a [`Watcher`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    None,
    /// Something the answer may depend on changed.
    Maybe,
    /// The manager says the unit changed: try at once.
    Unit,
}

/// The watching side of a wait: the manager's signals about a unit where
/// the wait has a [`Watch::Unit`] and the agent reaches them, else inotify
/// on its [`Watch::Entry`]s. Without either it only sleeps: the wait then
/// runs on its fallback pauses.
struct Watcher<'a> {
    entries: Vec<(&'a str, &'a str)>,
    unit: Option<&'a str>,
    /// The host's answer for an active unit ([`Watch::Unit`]), or empty.
    when_active: &'a str,
    signals: Option<UnitSignals>,
    /// The inotify descriptor, made when entries are watched.
    fd: Option<std::fs::File>,
    /// Whether making it failed (then not again).
    no_inotify: bool,
    /// Watch descriptor → the entry names that matter in it (empty: all).
    names: Vec<(i32, String)>,
    buf: Vec<u8>,
}

impl<'a> Watcher<'a> {
    fn new(watch: &'a [Watch]) -> Watcher<'a> {
        let mut entries = Vec::new();
        let mut unit = None;
        let mut when_active = "";
        for w in watch {
            match w {
                Watch::Entry { dir, name } => entries.push((dir.as_str(), name.as_str())),
                Watch::Unit {
                    name,
                    when_active: answer,
                } => {
                    unit = Some(name.as_str());
                    when_active = answer.as_str();
                }
            }
        }
        // Said once per agent: an agent without root asks on every wait.
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let signals = unit.and_then(|u| {
            UnitSignals::connect(u)
                .map_err(|e| {
                    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        eprintln!("attest-agent: no systemd signals ({e}); unit waits watch files");
                    }
                })
                .ok()
        });
        Watcher {
            entries,
            unit,
            when_active,
            signals,
            fd: None,
            no_inotify: false,
            names: Vec::new(),
            buf: vec![0; 64 * 1024],
        }
    }

    /// Before a try: forgets the signals about the past (the try sees
    /// their effect) and (re)adds the inotify watches where they serve:
    /// a directory that did not exist may exist now, and one that was
    /// removed must be watched through its parent again.
    fn arm(&mut self) {
        if let Some(signals) = &mut self.signals {
            if signals.named().is_ok() {
                return;
            }
            // systemd re-executed: its new socket serves again.
            self.signals = self.unit.and_then(|u| UnitSignals::connect(u).ok());
            if self.signals.is_some() {
                return;
            }
        }
        if self.entries.is_empty() || self.no_inotify {
            return;
        }
        if self.fd.is_none() {
            match sys::inotify() {
                Ok(fd) => self.fd = Some(fd.into()),
                Err(e) => {
                    eprintln!("attest-agent: no inotify ({e}); waits poll");
                    self.no_inotify = true;
                    return;
                }
            }
        }
        let Some(fd) = &self.fd else { return };
        self.names.clear();
        let mask = sys::IN_CREATE
            | sys::IN_DELETE
            | sys::IN_MOVED_FROM
            | sys::IN_MOVED_TO
            | sys::IN_MODIFY
            | sys::IN_ATTRIB
            | sys::IN_CLOSE_WRITE
            | sys::IN_DELETE_SELF
            | sys::IN_MOVE_SELF
            | sys::IN_ONLYDIR;
        for (dir, name) in &self.entries {
            let (dir, name) = nearest_existing(dir, name);
            if let Ok(wd) = sys::add_watch(fd, &dir, mask) {
                self.names.push((wd, name));
            }
        }
    }

    /// What to do before a try: the manager's word on the unit where its
    /// signals reach this wait (a NixOS `wait_for_unit` reads the same
    /// `ActiveState`), else (or with `force_try`, at the deadline) the try.
    fn verdict(&mut self, force_try: bool) -> Verdict<'a> {
        let Some(signals) = self.signals.as_mut().filter(|_| !force_try) else {
            return Verdict::Try;
        };
        match signals.state() {
            Ok(s) if s.active_state == "active" && !self.when_active.is_empty() => {
                Verdict::Answer(self.when_active)
            }
            Ok(s) if s.active_state == "failed" || s.active_state == "active" => Verdict::Try,
            Ok(s) if s.active_state == "inactive" && s.job == 0 => Verdict::Try,
            Ok(_) => Verdict::Pending,
            Err(_) => {
                // Gone or not answering: the wait goes on with its files
                // and pauses (a manager that does not answer would cost
                // every later try the call's time limit).
                self.signals = None;
                Verdict::Try
            }
        }
    }

    /// Whether the manager's signals about the unit reach this wait.
    fn hears_unit(&self) -> bool {
        self.signals.is_some()
    }

    /// What changed within `limit` (it waits that long only when nothing
    /// did).
    fn changed_within(&mut self, limit: Duration) -> Change {
        if let Some(signals) = &mut self.signals {
            if !readable_within(signals, limit) {
                return Change::None;
            }
            return match signals.named() {
                Ok(true) => Change::Unit,
                Ok(false) => Change::None,
                // Lost: the next arm reconnects or falls back to files.
                Err(_) => Change::Maybe,
            };
        }
        let Watcher { fd, names, buf, .. } = self;
        let Some(mut file) = fd.as_ref() else {
            std::thread::sleep(limit);
            return Change::None;
        };
        if !readable_within(file, limit) {
            return Change::None;
        }
        let mut relevant = false;
        // Non-blocking: reads until the queue is empty.
        while let Ok(n) = file.read(buf) {
            if n == 0 {
                break;
            }
            relevant |= events(&buf[..n]).any(|(wd, mask, name)| {
                mask & (sys::IN_Q_OVERFLOW | sys::IN_IGNORED | sys::IN_DELETE_SELF) != 0
                    || names
                        .iter()
                        .any(|(w, want)| *w == wd && (want.is_empty() || want.as_bytes() == name))
            });
        }
        match relevant {
            true => Change::Maybe,
            false => Change::None,
        }
    }
}

/// Whether `fd` has something to read within `limit`.
fn readable_within(fd: &impl AsRawFd, limit: Duration) -> bool {
    let mut fds = [PollFd {
        fd: fd.as_raw_fd(),
        events: POLLIN,
        revents: 0,
    }];
    let ms = limit.as_millis().clamp(1, i32::MAX as u128) as i32;
    matches!(sys::wait_ready(&mut fds, ms), Ok(n) if n > 0)
}

/// The events in a buffer `read` from an inotify descriptor: (watch
/// descriptor, mask, entry name).
fn events(mut buf: &[u8]) -> impl Iterator<Item = (i32, u32, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 16 {
            return None;
        }
        let word = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
        let (wd, mask, len) = (word(0) as i32, word(4), word(12) as usize);
        let end = (16 + len).min(buf.len());
        let name = &buf[16..end];
        let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
        buf = &buf[end..];
        Some((wd, mask, name))
    })
}

/// The directory to watch for `name` in `dir`: `dir` itself when it
/// exists, else its nearest existing ancestor, for the entry on the way.
fn nearest_existing(dir: &str, name: &str) -> (String, String) {
    let mut dir = std::path::PathBuf::from(dir);
    let mut name = name.to_owned();
    while !dir.is_dir() {
        let Some(parent) = dir.parent() else { break };
        name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        dir = parent.to_path_buf();
    }
    (dir.to_string_lossy().into_owned(), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_watched_through_its_nearest_ancestor() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_str().unwrap();
        let deep = format!("{root}/a/b");
        assert_eq!(
            nearest_existing(&deep, "f"),
            (root.to_owned(), "a".to_owned())
        );
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(nearest_existing(&deep, "f"), (deep.clone(), "f".to_owned()));
    }

    #[test]
    fn only_the_watched_entry_wakes_a_wait() {
        let t = tempfile::tempdir().unwrap();
        let watch = [Watch::Entry {
            dir: format!("{}/sub", t.path().display()),
            name: "flag".into(),
        }];
        let mut w = Watcher::new(&watch);
        w.arm();
        std::fs::write(t.path().join("other"), b"").unwrap();
        assert_eq!(w.changed_within(Duration::from_millis(100)), Change::None);
        std::fs::create_dir(t.path().join("sub")).unwrap();
        assert_eq!(
            w.changed_within(Duration::from_millis(1000)),
            Change::Maybe,
            "sub made"
        );
        w.arm();
        std::fs::write(t.path().join("sub/noise"), b"").unwrap();
        assert_eq!(w.changed_within(Duration::from_millis(100)), Change::None);
        std::fs::write(t.path().join("sub/flag"), b"").unwrap();
        assert_eq!(
            w.changed_within(Duration::from_millis(1000)),
            Change::Maybe,
            "flag made"
        );
    }
}
