//! [`Qmp`]: attest's own QMP client. It reads the greeting, negotiates
//! capabilities, routes command replies to their callers by `id`, and hands
//! asynchronous events (`SHUTDOWN`, `MIGRATION`, …) to subscribers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<Value, ReplyError>>>>>>;

/// Why a QMP operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected.
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        /// The QMP socket.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// QEMU sent no greeting.
    #[error("no QMP greeting within 30 s")]
    NoGreeting,
    /// Reading the greeting failed.
    #[error("reading the QMP greeting: {source}")]
    ReadGreeting {
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// QEMU closed the socket before greeting.
    #[error("QMP closed before its greeting")]
    ClosedBeforeGreeting,
    /// The greeting is not JSON.
    #[error("bad QMP greeting {greeting:?}: {source}")]
    BadGreeting {
        /// The line.
        greeting: String,
        /// Why.
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// The greeting is JSON but not QMP's.
    #[error("not a QMP greeting: {greeting}")]
    NotQmp {
        /// The line.
        greeting: String,
    },
    /// A thread panicked while holding the table of waiting callers.
    #[error("QMP lock poisoned")]
    Poisoned,
    /// The connection closed before the command was sent.
    #[error("the QMP connection is closed")]
    Closed,
    /// The connection closed while the command waited for its reply.
    #[error("the QMP connection closed")]
    ClosedWaiting,
    /// Sending the command failed.
    #[error("QMP {command}: {source}")]
    Write {
        /// The command.
        command: String,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// QEMU answered the command with an error.
    #[error("QMP {command}: {reply}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's answer.
        #[source]
        reply: ReplyError,
    },
    /// No event came in time.
    #[error("no QMP event within {seconds} seconds")]
    NoEvent {
        /// How long it waited.
        seconds: f64,
    },
}

/// A reply that is not a `return`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// QEMU's `error` (its `desc`).
    #[error("{desc}")]
    Error {
        /// QEMU's error class (`GenericError`, `CommandNotFound`, …).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// A reply with neither `return` nor `error`.
    #[error("unexpected QMP reply: {line}")]
    Unexpected {
        /// The line.
        line: String,
    },
    /// The connection closed before the reply.
    #[error("the QMP connection closed")]
    Closed,
}

/// A connected QMP session.
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<Value>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Qmp {
    /// Connects to a QMP socket, reads the greeting and enters command mode.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| QmpError::Connect {
                path: path.to_owned(),
                source: Arc::new(e),
            })?;
        let (r, w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        let greeting = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| QmpError::NoGreeting)?
            .map_err(|e| QmpError::ReadGreeting {
                source: Arc::new(e),
            })?
            .ok_or(QmpError::ClosedBeforeGreeting)?;
        let g: Value = match serde_json::from_str(&greeting) {
            Ok(g) => g,
            Err(e) => {
                return Err(QmpError::BadGreeting {
                    greeting,
                    source: Arc::new(e),
                })
            }
        };
        if g.get("QMP").is_none() {
            return Err(QmpError::NotQmp { greeting });
        }
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (events, _) = broadcast::channel(256);
        let reader = {
            let pending = pending.clone();
            let events = events.clone();
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let Ok(v) = serde_json::from_str::<Value>(&line) else {
                        continue;
                    };
                    if v.get("event").is_some() {
                        let _ = events.send(v);
                        continue;
                    }
                    let Some(id) = v.get("id").and_then(Value::as_u64) else {
                        continue;
                    };
                    let reply = if let Some(ret) = v.get("return") {
                        Ok(ret.clone())
                    } else if let Some(err) = v.get("error") {
                        let field = |k: &str| err.get(k).and_then(Value::as_str).map(str::to_owned);
                        Err(ReplyError::Error {
                            class: field("class").unwrap_or_default(),
                            desc: field("desc").unwrap_or_else(|| "unknown QMP error".to_owned()),
                        })
                    } else {
                        Err(ReplyError::Unexpected { line })
                    };
                    let tx = pending
                        .lock()
                        .ok()
                        .and_then(|mut g| g.as_mut().and_then(|m| m.remove(&id)));
                    if let Some(tx) = tx {
                        let _ = tx.send(reply);
                    }
                }
                // Closed: fail every waiting caller and refuse new ones.
                if let Ok(mut g) = pending.lock() {
                    if let Some(map) = g.take() {
                        for (_, tx) in map {
                            let _ = tx.send(Err(ReplyError::Closed));
                        }
                    }
                }
            })
        };
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(w),
            pending,
            next_id: AtomicU64::new(1),
            events,
            reader,
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Subscribes to events (each is the whole event object).
    pub fn subscribe(&self) -> broadcast::Receiver<Value> {
        self.events.subscribe()
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut g = self.pending.lock().map_err(|_| QmpError::Poisoned)?;
            let map = g.as_mut().ok_or(QmpError::Closed)?;
            map.insert(id, tx);
        }
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        {
            let mut w = self.writer.lock().await;
            if let Err(e) = w.write_all(line.as_bytes()).await {
                if let Ok(mut g) = self.pending.lock() {
                    if let Some(m) = g.as_mut() {
                        m.remove(&id);
                    }
                }
                return Err(QmpError::Write {
                    command: command.to_owned(),
                    source: Arc::new(e),
                });
            }
        }
        rx.await
            .map_err(|_| QmpError::ClosedWaiting)?
            .map_err(|reply| QmpError::Command {
                command: command.to_owned(),
                reply,
            })
    }

    /// An HMP command through `human-monitor-command` (only where QMP has no
    /// equivalent). Returns HMP's text output.
    pub async fn hmp(&self, command_line: &str) -> Result<String, QmpError> {
        let v = self
            .execute(
                "human-monitor-command",
                Some(json!({ "command-line": command_line })),
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }
}

/// The next event from `events`, waiting at most `timeout`. Events the
/// receiver fell behind on are skipped, as the NixOS driver skips events it
/// does not want.
pub async fn next_event(
    events: &mut broadcast::Receiver<Value>,
    timeout: Duration,
) -> Result<Value, QmpError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => {
                return Err(QmpError::NoEvent {
                    seconds: timeout.as_secs_f64(),
                })
            }
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(broadcast::error::RecvError::Closed)) => return Err(QmpError::ClosedWaiting),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake QMP server speaking the real wire format.
    #[tokio::test]
    async fn routes_replies_by_id_and_events_to_subscribers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&l).unwrap();
                let id = v["id"].clone();
                let reply = match v["execute"].as_str().unwrap() {
                    "qmp_capabilities" => json!({"return": {}, "id": id}),
                    "human-monitor-command" => {
                        let line = v["arguments"]["command-line"].as_str().unwrap();
                        json!({"return": format!("ran {line}\r\n"), "id": id})
                    }
                    "query-status" => {
                        w.write_all(b"{\"event\": \"STOP\", \"data\": {}}\n")
                            .await
                            .unwrap();
                        json!({"return": {"status": "running"}, "id": id})
                    }
                    _ => json!({"error": {"class": "CommandNotFound", "desc": "nope"}, "id": id}),
                };
                w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
            }
        });
        let qmp = Qmp::connect(&path).await.unwrap();
        let mut events = qmp.subscribe();
        let st = qmp.execute("query-status", None).await.unwrap();
        assert_eq!(st["status"], "running");
        let stop = next_event(&mut events, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(stop["event"], "STOP");
        // send_monitor_command goes through `human-monitor-command`.
        assert_eq!(qmp.hmp("info status").await.unwrap(), "ran info status\r\n");
        let e = next_event(&mut events, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("no QMP event within 0.05 seconds"),
            "{e}"
        );
        let e = qmp.execute("bogus", None).await.unwrap_err();
        assert_eq!(e.to_string(), "QMP bogus: nope");
        assert!(
            matches!(&e, QmpError::Command { reply: ReplyError::Error { class, .. }, .. } if class == "CommandNotFound"),
            "{e:?}"
        );
        drop(qmp);
        server.abort();
    }
}
