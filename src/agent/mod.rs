//! `attest-agent`: the guest side of the agent protocol ([`wire`]). It
//! replaces the backdoor shell on its connection (stdin/stdout), runs each
//! command with one fork+exec in its own session, streams the outputs back
//! and serves many requests at once, one thread each.
//!
//! std only, no crates: `build.rs` compiles this module tree with a bare
//! `rustc` call into a static binary that attest embeds and uploads into
//! guests (`guest::agent`). The library also compiles it, for tests and lints.

mod command;
pub mod sha256;
mod sys;
mod transfer;
pub mod wire;

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use transfer::Msg;
use wire::{Digest, Exec, Frame, Transfer, DATA, END, EXEC, GET, HELLO, KILL, PUT, VERSION};

/// Running commands: request id → process group.
type Registry = Arc<Mutex<HashMap<u32, u32>>>;

/// Running downloads: request id → set to stop it.
type Downloads = Arc<Mutex<HashMap<u32, Arc<AtomicBool>>>>;

/// Frames buffered towards the host before command threads wait: a fast
/// producer stalls instead of filling the guest's memory.
const QUEUE: usize = 64;

/// The agent's `main`: `--version` prints the version, otherwise serves
/// stdin/stdout until stdin closes.
pub fn main() {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("attest-agent {VERSION}");
        return;
    }
    // Raw descriptors: std's stdout is line-buffered, and frames are binary.
    let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map(std::fs::File::from);
    match (
        dup(std::io::stdin().as_fd()),
        dup(std::io::stdout().as_fd()),
    ) {
        (Ok(input), Ok(output)) => serve(input, output),
        (Err(e), _) | (_, Err(e)) => eprintln!("attest-agent: cannot use stdin/stdout: {e}"),
    }
    std::process::exit(0);
}

/// Serves requests from `input`, replying on `output`, until `input` ends or
/// fails. Kills the process groups of commands still running then.
pub fn serve(input: impl Read, output: impl Write + Send + 'static) {
    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
    let writer = std::thread::spawn(move || write_frames(rx, output));
    let registry: Registry = Arc::default();
    let downloads: Downloads = Arc::default();
    // Uploads in progress: their data goes to their own threads.
    let mut uploads: HashMap<u32, SyncSender<Msg>> = HashMap::new();
    let _ = tx.send(format!("{HELLO} {VERSION}\n").into_bytes());
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let reason = loop {
        let frame = match read_frame(&mut input) {
            Ok(Some(f)) => f,
            Ok(None) => break None,
            Err(e) => break Some(e),
        };
        match frame.kind {
            EXEC => match Exec::decode(&frame.payload) {
                Ok(exec) => {
                    let (tx, registry) = (tx.clone(), registry.clone());
                    std::thread::spawn(move || command::run(frame.id, exec, tx, registry));
                }
                Err(e) => {
                    let msg = format!("bad exec request: {e}");
                    let _ = tx.send(error_frame(frame.id, &msg));
                }
            },
            KILL => {
                if let Some(pgid) = registry.lock().expect("registry").get(&frame.id) {
                    sys::kill_group(*pgid, sys::SIGKILL);
                }
                // Dropping its inbox makes an upload remove its staging file.
                uploads.remove(&frame.id);
                if let Some(stop) = downloads.lock().expect("downloads").get(&frame.id) {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            PUT => match Transfer::decode(&frame.payload) {
                Ok(t) => {
                    let (inbox, rx) = sync_channel(transfer::UPLOAD_QUEUE);
                    uploads.insert(frame.id, inbox);
                    let tx = tx.clone();
                    std::thread::spawn(move || transfer::receive(frame.id, t, rx, tx));
                }
                Err(e) => {
                    let _ = tx.send(error_frame(frame.id, &format!("bad upload request: {e}")));
                }
            },
            DATA => {
                // Blocks while the upload's queue is full: the host's data
                // waits in the stream instead of in memory.
                let gone = match uploads.get(&frame.id) {
                    Some(inbox) => inbox.send(Msg::Data(frame.payload)).is_err(),
                    None => false,
                };
                if gone {
                    uploads.remove(&frame.id);
                }
            }
            END => {
                if let Some(inbox) = uploads.remove(&frame.id) {
                    match Digest::decode(&frame.payload) {
                        Ok(d) => {
                            let _ = inbox.send(Msg::End(d));
                        }
                        Err(e) => {
                            let _ = tx.send(error_frame(frame.id, &format!("bad upload end: {e}")));
                        }
                    }
                }
            }
            GET => match Transfer::decode(&frame.payload) {
                Ok(t) => {
                    let stop = Arc::new(AtomicBool::new(false));
                    downloads
                        .lock()
                        .expect("downloads")
                        .insert(frame.id, stop.clone());
                    let (tx, downloads) = (tx.clone(), downloads.clone());
                    std::thread::spawn(move || {
                        transfer::send(frame.id, t, tx, stop);
                        downloads.lock().expect("downloads").remove(&frame.id);
                    });
                }
                Err(e) => {
                    let _ = tx.send(error_frame(frame.id, &format!("bad download request: {e}")));
                }
            },
            other => {
                let msg = format!("unknown request kind {other}");
                let _ = tx.send(error_frame(frame.id, &msg));
            }
        }
    };
    if let Some(e) = reason {
        eprintln!("attest-agent: {e}");
    }
    // The host is gone: nothing it started may outlive the connection.
    for pgid in registry.lock().expect("registry").values() {
        sys::kill_group(*pgid, sys::SIGKILL);
    }
    drop(uploads);
    for stop in downloads.lock().expect("downloads").values() {
        stop.store(true, Ordering::Relaxed);
    }
    drop(tx);
    let _ = writer.join();
}

fn error_frame(id: u32, msg: &str) -> Vec<u8> {
    Frame {
        kind: wire::ERROR,
        id,
        payload: msg.as_bytes().to_vec(),
    }
    .encode()
}

/// `Ok(None)` at a clean end of the stream (between frames).
fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, String> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(format!("reading a frame: {e}")),
    }
    let n = wire::body_len(len)?;
    let mut body = vec![0u8; n];
    r.read_exact(&mut body)
        .map_err(|e| format!("reading a frame body: {e}"))?;
    wire::decode_body(body).map(Some)
}

/// Writes queued frames, flushing whenever the queue runs empty.
fn write_frames(rx: Receiver<Vec<u8>>, output: impl Write) {
    let mut w = BufWriter::with_capacity(256 * 1024, output);
    while let Ok(first) = rx.recv() {
        if w.write_all(&first).is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            if w.write_all(&more).is_err() {
                return;
            }
        }
        if w.flush().is_err() {
            return;
        }
    }
}
