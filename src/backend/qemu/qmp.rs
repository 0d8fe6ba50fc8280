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

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>>;

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
    pub async fn connect(path: &Path) -> Result<Qmp, String> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
        let (r, w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        let greeting = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| "no QMP greeting within 30 s".to_owned())?
            .map_err(|e| format!("reading the QMP greeting: {e}"))?
            .ok_or("QMP closed before its greeting")?;
        let g: Value = serde_json::from_str(&greeting)
            .map_err(|e| format!("bad QMP greeting {greeting:?}: {e}"))?;
        if g.get("QMP").is_none() {
            return Err(format!("not a QMP greeting: {greeting}"));
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
                        Err(err
                            .get("desc")
                            .and_then(Value::as_str)
                            .unwrap_or("unknown QMP error")
                            .to_owned())
                    } else {
                        Err(format!("unexpected QMP reply: {line}"))
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
                            let _ = tx.send(Err("the QMP connection closed".into()));
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
    pub async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut g = self.pending.lock().map_err(|_| "QMP lock poisoned")?;
            let map = g.as_mut().ok_or("the QMP connection is closed")?;
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
                return Err(format!("QMP {command}: {e}"));
            }
        }
        rx.await
            .map_err(|_| "the QMP connection closed".to_owned())?
            .map_err(|e| format!("QMP {command}: {e}"))
    }

    /// An HMP command through `human-monitor-command` (only where QMP has no
    /// equivalent). Returns HMP's text output.
    pub async fn hmp(&self, command_line: &str) -> Result<String, String> {
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
) -> Result<Value, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => {
                return Err(format!(
                    "no QMP event within {} seconds",
                    timeout.as_secs_f64()
                ))
            }
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                return Err("the QMP connection closed".into())
            }
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
        assert!(e.contains("no QMP event within 0.05 seconds"), "{e}");
        let e = qmp.execute("bogus", None).await.unwrap_err();
        assert!(e.contains("nope"), "{e}");
        drop(qmp);
        server.abort();
    }
}
