//! Framing of the command protocol (DESIGN.md §3), free of I/O so it can be
//! tested exhaustively.
//!
//! One round trip per command. The host sends one line of bash; the guest's
//! backdoor shell runs the command (base64-encoded, under `timeout`, stdin
//! from `/dev/null`, stdout and stderr into per-command files so a background
//! process holding stdout cannot stall the reply) and prints one reply line:
//! `<marker> <seq> <status> <stdout base64> <stderr base64>`.
//!
//! Process cost per command in the guest: `base64 -d`, `timeout`, `bash`;
//! the output encoders run only when there is output; stale output files are
//! removed in one `rm` every [`CLEANUP_EVERY`] commands.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

/// Commands between two removals of old output files.
pub const CLEANUP_EVERY: u64 = 64;

/// Seconds `timeout` waits after SIGTERM before SIGKILL.
const KILL_AFTER: u32 = 5;

/// What a guest command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit status (124 when the guest-side timeout fired).
    pub status: i32,
    /// Standard output, byte for byte.
    pub stdout: Vec<u8>,
    /// Standard error, byte for byte.
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    /// stdout as text (lossy for non-UTF-8 bytes).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (lossy for non-UTF-8 bytes).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// The per-session state of the framing: marker and sequence numbers.
#[derive(Debug, Clone)]
pub struct Framer {
    marker: String,
    seq: u64,
}

impl Framer {
    /// A framer with a marker that is unique to this session.
    pub fn new(session_id: u64) -> Framer {
        Framer {
            marker: format!("ATTEST-REPLY-{session_id:x}-{:x}", std::process::id()),
            seq: 0,
        }
    }

    /// The line that prepares a fresh backdoor shell: no prompts, no history
    /// expansion, and the directory for output files.
    ///
    /// `/dev/shm` first: the backdoor starts before `tmp.mount`, and a tmpfs
    /// mounted over `/tmp` between writing and reading a command's output
    /// would hide it. `/dev/shm` is mounted before PID 1's first unit.
    pub fn init_line(&self) -> String {
        "set +o histexpand 2>/dev/null; unset HISTFILE; PS1=; PS2=; \
         __ad=/dev/shm; [ -d \"$__ad\" ] && [ -w \"$__ad\" ] || __ad=${TMPDIR:-/tmp}\n"
            .to_owned()
    }

    /// Encodes one command; returns the line to send and its sequence number.
    /// The command runs as the NixOS driver runs it: `bash -c 'set -euo
    /// pipefail; <command>'`, so `false; true` fails here as it does there.
    pub fn encode(&mut self, command: &str, timeout_secs: u64) -> (String, u64) {
        self.seq += 1;
        let seq = self.seq;
        let cleanup = if seq % CLEANUP_EVERY == 0 {
            "rm -f \"$__ad\"/.attest-$$-*; "
        } else {
            ""
        };
        let line = format!(
            "{cleanup}__ao=\"$__ad/.attest-$$-{seq}.out\"; __ae=\"$__ad/.attest-$$-{seq}.err\"; \
             __ac=$(base64 -d <<<'{b64}'); \
             timeout -k {KILL_AFTER} {timeout_secs} bash -c \"$__ac\" </dev/null >\"$__ao\" 2>\"$__ae\"; __as=$?; \
             __o=; __e=; [ -s \"$__ao\" ] && __o=$(base64 -w0 <\"$__ao\"); [ -s \"$__ae\" ] && __e=$(base64 -w0 <\"$__ae\"); \
             printf '\\n%s %s %s %s %s\\n' {marker} {seq} \"$__as\" \"$__o\" \"$__e\"\n",
            b64 = B64.encode(format!("set -euo pipefail; {command}").as_bytes()),
            marker = self.marker,
        );
        (line, seq)
    }

    /// Parses one line read from the guest. `Ok(None)`: not a reply (console
    /// noise, an echo, a prompt); skip it.
    pub fn decode(&self, line: &[u8], expected_seq: u64) -> Result<Option<CommandOutput>, String> {
        let line = trim_line_end(line);
        let Some(rest) = line
            .strip_prefix(self.marker.as_bytes())
            .and_then(|r| r.strip_prefix(b" "))
        else {
            return Ok(None);
        };
        let rest = std::str::from_utf8(rest).map_err(|_| "reply is not ASCII".to_owned())?;
        let fields: Vec<&str> = rest.split(' ').collect();
        let [seq, status, out, err] = fields[..] else {
            return Err(format!("malformed reply: {rest:.200}"));
        };
        let seq: u64 = seq
            .parse()
            .map_err(|_| format!("bad sequence number {seq:?}"))?;
        if seq != expected_seq {
            // A reply to an older command that was abandoned (host timeout).
            return Ok(None);
        }
        let status: i32 = status
            .parse()
            .map_err(|_| format!("bad exit status {status:?}"))?;
        let decode = |s: &str, what: &str| {
            B64.decode(s)
                .map_err(|e| format!("{what} is not valid base64: {e}"))
        };
        Ok(Some(CommandOutput {
            status,
            stdout: decode(out, "stdout")?,
            stderr: decode(err, "stderr")?,
        }))
    }
}

fn trim_line_end(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = line {
        line = rest;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_for_the_current_command_decodes() {
        let mut f = Framer::new(7);
        let (_, seq) = f.encode("echo hi", 10);
        let line = format!("{} {seq} 3 {} {}\r\n", f.marker, B64.encode("hi\n"), "");
        let out = f.decode(line.as_bytes(), seq).unwrap().unwrap();
        assert_eq!(out.status, 3);
        assert_eq!(out.stdout, b"hi\n");
        assert!(out.stderr.is_empty());
    }

    #[test]
    fn noise_stale_replies_and_garbage_are_told_apart() {
        let mut f = Framer::new(1);
        let (_, seq) = f.encode("true", 10);
        assert_eq!(
            f.decode(b"Spawning backdoor root shell...\n", seq),
            Ok(None)
        );
        let stale = format!("{} {} 0  \n", f.marker, seq - 1);
        assert_eq!(f.decode(stale.as_bytes(), seq), Ok(None));
        let bad = format!("{} {seq} 0 !!! \n", f.marker);
        assert!(f.decode(bad.as_bytes(), seq).is_err());
    }

    #[test]
    fn the_command_travels_as_base64_and_stdin_is_null() {
        let mut f = Framer::new(1);
        let (line, _) = f.encode("echo 'quoted' \"$HOME\" `x`", 5);
        assert!(line.contains(&B64.encode("set -euo pipefail; echo 'quoted' \"$HOME\" `x`")));
        assert!(line.contains("</dev/null"));
        assert!(line.contains("timeout -k 5 5 bash -c"));
        assert_eq!(line.matches('\n').count(), 1, "exactly one line: {line}");
    }

    #[test]
    fn old_output_files_are_removed_periodically() {
        let mut f = Framer::new(1);
        let lines: Vec<String> = (0..CLEANUP_EVERY).map(|_| f.encode("true", 1).0).collect();
        assert!(!lines[0].contains("rm -f"));
        assert!(lines[CLEANUP_EVERY as usize - 1].starts_with("rm -f"));
    }
}
