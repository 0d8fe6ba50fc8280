//! The system manager's D-Bus signals about one unit, read from systemd's
//! private socket (`/run/systemd/private`: root only, no bus daemon in
//! between, every signal sent to every client). A wait for a unit then
//! tries again the moment systemd says the unit changed (`JobRemoved` as a
//! target is reached, `PropertiesChanged` as a service turns active or
//! fails) instead of on a timer or a directory change that may never come.
//!
//! Hand-written: the agent is std only (see the module root), and all it
//! needs is the `EXTERNAL` handshake, one method call and message framing;
//! which messages matter is decided by the marshalled unit name or object
//! path appearing in them, so no message is parsed beyond its length.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Where systemd (as PID 1) serves its API to local root clients.
const PRIVATE_SOCKET: &str = "/run/systemd/private";

/// How long the handshake may take: a manager that does not answer in
/// that time leaves the wait to its other watches.
const HANDSHAKE: Duration = Duration::from_secs(2);

/// How long an unanswered call waits before it is sent again.
const RESEND: Duration = Duration::from_millis(50);

/// D-Bus message types.
const METHOD_RETURN: u8 = 2;
const ERROR: u8 = 3;
const SIGNAL: u8 = 4;

/// A connection to the system manager that says when a signal names one
/// unit.
pub struct UnitSignals {
    stream: UnixStream,
    /// Bytes read that do not make a whole message yet.
    pending: Vec<u8>,
    /// The unit's name and object path as D-Bus marshals strings in a
    /// little-endian message (length, bytes, NUL)…
    needles_le: Vec<Vec<u8>>,
    /// … and in a big-endian one.
    needles_be: Vec<Vec<u8>>,
}

impl UnitSignals {
    /// Connects and asks systemd for the unit (named as systemctl
    /// completes it: `nginx.service`); once this returns, every later
    /// change of it comes as a signal naming its object (an alias such as
    /// Debian's `sshd.service` resolves to the unit's own object).
    pub fn connect(unit: &str) -> io::Result<UnitSignals> {
        let mut stream = UnixStream::connect(PRIVATE_SOCKET)?;
        stream.set_read_timeout(Some(HANDSHAKE))?;
        stream.set_write_timeout(Some(HANDSHAKE))?;
        let uid = std::fs::metadata("/proc/self")?.uid();
        let hex: String = uid
            .to_string()
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        stream.write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())?;
        let answer = read_line(&mut stream)?;
        if !answer.starts_with(b"OK ") {
            return Err(io::Error::other(format!(
                "systemd refused the D-Bus handshake: {}",
                String::from_utf8_lossy(&answer).trim_end()
            )));
        }
        stream.write_all(b"BEGIN\r\n")?;
        let mut signals = UnitSignals {
            stream,
            pending: Vec::new(),
            needles_le: Vec::new(),
            needles_be: Vec::new(),
        };
        let object = signals.load_unit(unit)?;
        let path = format!("/org/freedesktop/systemd1/unit/{}", bus_label(unit));
        for needle in [unit, &path, &object] {
            signals.needles_le.push(marshalled(needle, false));
            signals.needles_be.push(marshalled(needle, true));
        }
        signals.stream.set_nonblocking(true)?;
        Ok(signals)
    }

    /// `LoadUnit(unit)`: the unit's object path. Its answer also says
    /// systemd serves the connection: from then on no signal is missed
    /// (systemd sends every signal to every client of this socket). The
    /// first call after the handshake sits unread in systemd's buffer
    /// until more bytes come (seen with systemd 252), so it is sent twice
    /// at once, and again while unanswered.
    fn load_unit(&mut self, unit: &str) -> io::Result<String> {
        let started = std::time::Instant::now();
        self.stream.set_read_timeout(Some(RESEND))?;
        let mut serial = 1;
        self.stream.write_all(&load_unit_call(serial, unit))?;
        let mut sent = std::time::Instant::now() - RESEND;
        loop {
            if started.elapsed() >= HANDSHAKE {
                return Err(io::Error::other("systemd did not answer `LoadUnit`"));
            }
            if sent.elapsed() >= RESEND {
                serial += 1;
                self.stream.write_all(&load_unit_call(serial, unit))?;
                sent = std::time::Instant::now();
            }
            let mut chunk = [0u8; 4096];
            let n = match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            self.pending.extend_from_slice(&chunk[..n]);
            let mut answer = None;
            take_messages(&mut self.pending, |kind, message| {
                if answer.is_none() && (kind == METHOD_RETURN || kind == ERROR) {
                    answer = Some(match kind {
                        METHOD_RETURN => first_string(message),
                        _ => None,
                    });
                }
            })?;
            match answer {
                None => {}
                Some(Some(object)) => return Ok(object),
                Some(None) => {
                    return Err(io::Error::other(format!(
                        "systemd's LoadUnit({unit}) did not answer with an object path"
                    )))
                }
            }
        }
    }

    /// Reads what arrived; whether a signal among it names the unit. An
    /// error (systemd re-executing closes the socket) ends the source.
    pub fn named(&mut self) -> io::Result<bool> {
        let mut named = false;
        let mut chunk = [0u8; 16 << 10];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.pending.extend_from_slice(&chunk[..n]);
                    let (le, be) = (&self.needles_le, &self.needles_be);
                    take_messages(&mut self.pending, |kind, message| {
                        let needles = if message[0] == b'B' { be } else { le };
                        named |= kind == SIGNAL && needles.iter().any(|n| contains(message, n));
                    })?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(named),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsRawFd for UnitSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// Calls `on(type, message)` for each whole message at the front of
/// `pending` and removes them.
fn take_messages(pending: &mut Vec<u8>, mut on: impl FnMut(u8, &[u8])) -> io::Result<()> {
    let mut at = 0;
    while let Some(len) = message_len(&pending[at..])? {
        if pending.len() - at < len {
            break;
        }
        let message = &pending[at..at + len];
        on(message[1], message);
        at += len;
    }
    pending.drain(..at);
    Ok(())
}

/// The length of the message that starts `bytes`, once its fixed header
/// is there: 16 header bytes, the header fields padded to 8, the body.
fn message_len(bytes: &[u8]) -> io::Result<Option<usize>> {
    if bytes.len() < 16 {
        return Ok(None);
    }
    let word = |i: usize| {
        let b: [u8; 4] = bytes[i..i + 4].try_into().expect("4 bytes");
        match bytes[0] {
            b'B' => Ok(u32::from_be_bytes(b)),
            b'l' => Ok(u32::from_le_bytes(b)),
            other => Err(io::Error::other(format!(
                "a D-Bus message from systemd starts with byte {other:#x}"
            ))),
        }
    };
    let (body, fields) = (word(4)? as usize, word(12)? as usize);
    Ok(Some(16 + fields.div_ceil(8) * 8 + body))
}

/// Reads the handshake's answer line (it ends with CR LF).
fn read_line(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        line.push(byte[0]);
        if line.len() > 4096 {
            return Err(io::Error::other(
                "systemd's D-Bus handshake line is too long",
            ));
        }
    }
    Ok(line)
}

/// `org.freedesktop.systemd1.Manager.LoadUnit(unit)` as a little-endian
/// method call.
fn load_unit_call(serial: u32, unit: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    let field = |fields: &mut Vec<u8>, code: u8, sig: u8, value: &[u8]| {
        while fields.len() % 8 != 0 {
            fields.push(0);
        }
        fields.extend_from_slice(&[code, 1, sig, 0]);
        fields.extend_from_slice(value);
    };
    field(
        &mut fields,
        1,
        b'o',
        &marshalled("/org/freedesktop/systemd1", false),
    );
    let interface = marshalled("org.freedesktop.systemd1.Manager", false);
    field(&mut fields, 2, b's', &interface);
    field(&mut fields, 3, b's', &marshalled("LoadUnit", false));
    field(
        &mut fields,
        6,
        b's',
        &marshalled("org.freedesktop.systemd1", false),
    );
    // A signature is marshalled as one length byte, the text, NUL.
    field(&mut fields, 8, b'g', &[1, b's', 0]);
    let body = marshalled(unit, false);
    let mut message = vec![b'l', 1, 0, 1];
    message.extend_from_slice(&(body.len() as u32).to_le_bytes());
    message.extend_from_slice(&serial.to_le_bytes());
    message.extend_from_slice(&(fields.len() as u32).to_le_bytes());
    message.extend_from_slice(&fields);
    while message.len() % 8 != 0 {
        message.push(0);
    }
    message.extend_from_slice(&body);
    message
}

/// The string or object path a message's body starts with.
fn first_string(message: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<usize> {
        let b: [u8; 4] = message.get(i..i + 4)?.try_into().ok()?;
        Some(match message[0] {
            b'B' => u32::from_be_bytes(b),
            _ => u32::from_le_bytes(b),
        } as usize)
    };
    let body = 16 + word(12)?.div_ceil(8) * 8;
    let len = word(body)?;
    let text = message.get(body + 4..body + 4 + len)?;
    String::from_utf8(text.to_vec()).ok()
}

/// A D-Bus string or object path as marshalled: length, bytes, NUL.
fn marshalled(s: &str, big_endian: bool) -> Vec<u8> {
    let len = s.len() as u32;
    let mut v = match big_endian {
        true => len.to_be_bytes().to_vec(),
        false => len.to_le_bytes().to_vec(),
    };
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

/// A unit name as systemd escapes it in object paths: every byte but
/// ASCII letters and (not first) digits becomes `_` and two hex digits.
fn bus_label(name: &str) -> String {
    let mut label = String::new();
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            label.push(b as char);
        } else {
            label.push_str(&format!("_{b:02x}"));
        }
    }
    if label.is_empty() {
        label.push('_');
    }
    label
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_escaped_as_systemd_does() {
        assert_eq!(bus_label("multi-user.target"), "multi_2duser_2etarget");
        assert_eq!(bus_label("a_b@1.service"), "a_5fb_401_2eservice");
        assert_eq!(bus_label("9p.mount"), "_39p_2emount");
    }

    #[test]
    fn messages_are_framed_by_their_header() {
        let call = load_unit_call(1, "a.service");
        assert_eq!(message_len(&call).unwrap(), Some(call.len()));
        let mut two = call.clone();
        two.extend_from_slice(&call[..20]);
        let mut seen = 0;
        take_messages(&mut two, |kind, m| {
            assert_eq!((kind, m.len()), (1, call.len()));
            seen += 1;
        })
        .unwrap();
        assert_eq!((seen, two.len()), (1, 20), "the partial one stays");
        assert_eq!(first_string(&call).as_deref(), Some("a.service"));
        assert!(message_len(b"xxxxxxxxxxxxxxxxxx").is_err());
    }
}
