//! The system manager's D-Bus signals about one unit, read from systemd's
//! private socket (`/run/systemd/private`: root only, no bus daemon in
//! between, every signal sent to every client). A wait for a unit then
//! tries again the moment systemd says the unit changed (`JobRemoved` as a
//! target is reached, `PropertiesChanged` as a service turns active or
//! fails) instead of on a timer or a directory change that may never come.
//!
//! Hand-written: the agent is std only (see the module root), and all it
//! needs is the `EXTERNAL` handshake, method calls with string arguments,
//! the few answers it reads (`LoadUnit`'s object path, a unit's
//! `ActiveState` and `Job`) and message framing; which signals matter is
//! decided by the marshalled unit name or object path appearing in them,
//! so no signal is parsed beyond its length.

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
    /// What a signal about the unit carries.
    needles: Needles,
    /// The unit's object path (an alias's is its unit's).
    object: String,
    /// The serial of the next call.
    serial: u32,
    /// A signal naming the unit was read while a call waited for its
    /// answer: [`UnitSignals::named`] reports it.
    heard: bool,
}

/// What the manager says of the unit now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    /// `ActiveState`: active, inactive, activating, failed, …
    pub active_state: String,
    /// The id of its pending job, 0 for none.
    pub job: u32,
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
            needles: Needles::default(),
            object: String::new(),
            serial: 1,
            heard: false,
        };
        // Its answer also says systemd serves the connection: from then on
        // no signal is missed (systemd sends every signal to every client
        // of this socket).
        let reply = signals.call("LoadUnit", |serial| {
            method_call(serial, MANAGER_PATH, MANAGER, "LoadUnit", &[unit])
        })?;
        let object = first_string(&reply, 0).ok_or_else(|| {
            io::Error::other(format!(
                "systemd's LoadUnit({unit}) did not answer with an object path"
            ))
        })?;
        // `JobRemoved` names the unit, `PropertiesChanged` its object.
        signals.needles = Needles::of(&[unit, &object]);
        signals.object = object;
        signals.stream.set_nonblocking(true)?;
        Ok(signals)
    }

    /// The unit's `ActiveState` and pending job, asked now.
    pub fn state(&mut self) -> io::Result<UnitState> {
        self.stream.set_nonblocking(false)?;
        let state = self.property("ActiveState").and_then(|active| {
            let job = self.property("Job")?;
            Ok(UnitState {
                active_state: first_string(&active, VARIANT_STRING)
                    .ok_or_else(|| io::Error::other("ActiveState is not a string"))?,
                job: body_u32(&job, VARIANT_JOB_ID)
                    .ok_or_else(|| io::Error::other("Job is not (uo)"))?,
            })
        });
        self.stream.set_nonblocking(true)?;
        state
    }

    /// `org.freedesktop.DBus.Properties.Get` of a unit property: the reply.
    fn property(&mut self, name: &str) -> io::Result<Vec<u8>> {
        let object = self.object.clone();
        self.call(name, |serial| {
            method_call(
                serial,
                &object,
                "org.freedesktop.DBus.Properties",
                "Get",
                &["org.freedesktop.systemd1.Unit", name],
            )
        })
    }

    /// Sends a method call and returns its answer. The first call after
    /// the handshake sits unread in systemd's buffer until more bytes
    /// come (seen with systemd 252), so it goes twice at once, and every
    /// call again while unanswered; an answer to any of its copies counts.
    /// Signals read meanwhile are remembered for [`UnitSignals::named`].
    fn call(&mut self, what: &str, build: impl Fn(u32) -> Vec<u8>) -> io::Result<Vec<u8>> {
        let started = std::time::Instant::now();
        self.stream.set_read_timeout(Some(RESEND))?;
        let mut mine: Vec<u32> = Vec::new();
        let send = |signals: &mut UnitSignals, mine: &mut Vec<u32>| {
            let serial = signals.serial;
            signals.serial = signals.serial.wrapping_add(1).max(1);
            mine.push(serial);
            signals.stream.write_all(&build(serial))
        };
        if self.serial == 1 {
            send(self, &mut mine)?;
        }
        let mut sent = started - RESEND;
        loop {
            if started.elapsed() >= HANDSHAKE {
                return Err(io::Error::other(format!("systemd did not answer `{what}`")));
            }
            if sent.elapsed() >= RESEND {
                send(self, &mut mine)?;
                sent = std::time::Instant::now();
            }
            let mut chunk = [0u8; 16 << 10];
            let n = match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            self.pending.extend_from_slice(&chunk[..n]);
            let mut answer = None;
            let needles = &self.needles;
            let mut heard = false;
            take_messages(&mut self.pending, |kind, message| match kind {
                SIGNAL => heard |= needles.in_signal(kind, message),
                METHOD_RETURN | ERROR
                    if answer.is_none()
                        && reply_serial(message).is_some_and(|s| mine.contains(&s)) =>
                {
                    answer = Some((kind, message.to_vec()));
                }
                _ => {}
            })?;
            self.heard |= heard;
            match answer {
                None => {}
                Some((METHOD_RETURN, reply)) => return Ok(reply),
                Some(_) => {
                    return Err(io::Error::other(format!(
                        "systemd answered `{what}` with an error"
                    )))
                }
            }
        }
    }

    /// Reads what arrived; whether a signal among it names the unit. An
    /// error (systemd re-executing closes the socket) ends the source.
    pub fn named(&mut self) -> io::Result<bool> {
        let mut named = std::mem::take(&mut self.heard);
        let mut chunk = [0u8; 16 << 10];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.pending.extend_from_slice(&chunk[..n]);
                    let needles = &self.needles;
                    take_messages(&mut self.pending, |kind, message| {
                        named |= needles.in_signal(kind, message);
                    })?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(named),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The unit's name and object path as D-Bus marshals strings (length,
/// bytes, NUL), in either byte order a message may have.
#[derive(Default)]
struct Needles {
    little_endian: Vec<Vec<u8>>,
    big_endian: Vec<Vec<u8>>,
}

impl Needles {
    fn of(texts: &[&str]) -> Needles {
        Needles {
            little_endian: texts.iter().map(|t| marshalled(t, false)).collect(),
            big_endian: texts.iter().map(|t| marshalled(t, true)).collect(),
        }
    }

    /// Whether `message` is a signal that names the unit.
    fn in_signal(&self, kind: u8, message: &[u8]) -> bool {
        let needles = match message[0] {
            b'B' => &self.big_endian,
            _ => &self.little_endian,
        };
        kind == SIGNAL && needles.iter().any(|n| contains(message, n))
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

const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// Where the value of a `Get` reply starts in its body: after the
/// variant's signature (`1 s NUL`, padded to 4) for a string…
const VARIANT_STRING: usize = 4;
/// … and after `4 (uo) NUL`, padded to the struct's 8, for `Job`'s id.
const VARIANT_JOB_ID: usize = 8;

/// A little-endian method call to systemd with string arguments.
fn method_call(serial: u32, path: &str, interface: &str, member: &str, args: &[&str]) -> Vec<u8> {
    let mut fields = Vec::new();
    let field = |fields: &mut Vec<u8>, code: u8, sig: u8, value: &[u8]| {
        while fields.len() % 8 != 0 {
            fields.push(0);
        }
        fields.extend_from_slice(&[code, 1, sig, 0]);
        fields.extend_from_slice(value);
    };
    field(&mut fields, 1, b'o', &marshalled(path, false));
    field(&mut fields, 2, b's', &marshalled(interface, false));
    field(&mut fields, 3, b's', &marshalled(member, false));
    field(
        &mut fields,
        6,
        b's',
        &marshalled("org.freedesktop.systemd1", false),
    );
    let mut body = Vec::new();
    for a in args {
        while body.len() % 4 != 0 {
            body.push(0);
        }
        body.extend_from_slice(&marshalled(a, false));
    }
    if !args.is_empty() {
        // A signature is marshalled as one length byte, the text, NUL.
        let mut sig = vec![args.len() as u8];
        sig.extend(std::iter::repeat_n(b's', args.len()));
        sig.push(0);
        field(&mut fields, 8, b'g', &sig);
    }
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

/// A message's `u32` at `at` (in its byte order).
fn u32_at(message: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = message.get(at..at + 4)?.try_into().ok()?;
    Some(match message.first()? {
        b'B' => u32::from_be_bytes(b),
        _ => u32::from_le_bytes(b),
    })
}

/// Where a message's body starts.
fn body_start(message: &[u8]) -> Option<usize> {
    Some(16 + (u32_at(message, 12)? as usize).div_ceil(8) * 8)
}

/// The `u32` at `offset` in a message's body.
fn body_u32(message: &[u8], offset: usize) -> Option<u32> {
    u32_at(message, body_start(message)? + offset)
}

/// The string or object path at `offset` in a message's body.
fn first_string(message: &[u8], offset: usize) -> Option<String> {
    let at = body_start(message)? + offset;
    let len = u32_at(message, at)? as usize;
    let text = message.get(at + 4..at + 4 + len)?;
    String::from_utf8(text.to_vec()).ok()
}

/// The serial a reply answers (header field 5).
fn reply_serial(message: &[u8]) -> Option<u32> {
    let end = 16 + u32_at(message, 12)? as usize;
    let align = |at: usize, n: usize| at.div_ceil(n) * n;
    let mut at = 16;
    while at < end {
        at = align(at, 8);
        let code = *message.get(at)?;
        let sig_len = *message.get(at + 1)? as usize;
        let sig = message.get(at + 2..at + 2 + sig_len)?;
        at += 2 + sig_len + 1;
        match sig {
            b"u" => {
                at = align(at, 4);
                let value = u32_at(message, at)?;
                if code == 5 {
                    return Some(value);
                }
                at += 4;
            }
            b"s" | b"o" => {
                at = align(at, 4);
                at += 4 + u32_at(message, at)? as usize + 1;
            }
            b"g" => at += 1 + *message.get(at)? as usize + 1,
            _ => return None,
        }
    }
    None
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

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_name_the_call_they_answer() {
        // A method return as systemd sends it: PATH, then REPLY_SERIAL.
        let mut fields = vec![1, 1, b'o', 0];
        fields.extend_from_slice(&marshalled("/a", false));
        while fields.len() % 8 != 0 {
            fields.push(0);
        }
        fields.extend_from_slice(&[5, 1, b'u', 0]);
        fields.extend_from_slice(&42u32.to_le_bytes());
        let mut reply = vec![b'l', METHOD_RETURN, 1, 1];
        reply.extend_from_slice(&0u32.to_le_bytes());
        reply.extend_from_slice(&9u32.to_le_bytes());
        reply.extend_from_slice(&(fields.len() as u32).to_le_bytes());
        reply.extend_from_slice(&fields);
        assert_eq!(reply_serial(&reply), Some(42));
    }

    #[test]
    fn messages_are_framed_by_their_header() {
        let call = method_call(7, MANAGER_PATH, MANAGER, "LoadUnit", &["a.service"]);
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
        assert_eq!(first_string(&call, 0).as_deref(), Some("a.service"));
        assert_eq!(reply_serial(&call), None, "a call answers nothing");
        let two = method_call(8, "/o", "i.f", "Get", &["ab", "c"]);
        assert_eq!(first_string(&two, 0).as_deref(), Some("ab"));
        assert_eq!(first_string(&two, 8).as_deref(), Some("c"), "padded to 4");
        assert!(message_len(b"xxxxxxxxxxxxxxxxxx").is_err());
    }
}
