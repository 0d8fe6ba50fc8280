//! [`ApiClient`]: HTTP/1.1 over the VMM's unix socket (firecracker and
//! cloud-hypervisor both serve their REST API there), with `hyper`.
//!
//! One connection per request: the VMMs handle one request at a time anyway,
//! and a fresh connection cannot be left in a half-read state by a cancelled
//! call. Error responses keep the VMM's own words: firecracker's
//! `{"fault_message": "…"}`, cloud-hypervisor's plain-text body.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Why an API call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be reached or the HTTP exchange broke.
    #[error("{method} {path}: cannot reach the API socket {}: {error}", socket.display())]
    Transport {
        /// HTTP method.
        method: String,
        /// Request path.
        path: String,
        /// The socket.
        socket: PathBuf,
        /// What failed.
        #[source]
        error: TransportError,
    },
    /// The VMM answered with an error status.
    #[error("{method} {path} failed with HTTP {status}: {message}")]
    Status {
        /// HTTP method.
        method: String,
        /// Request path.
        path: String,
        /// HTTP status code.
        status: u16,
        /// The VMM's own message (`fault_message` or the body).
        message: String,
    },
    /// No answer within the time limit.
    #[error("{method} {path}: no answer within {seconds} s")]
    Timeout {
        /// HTTP method.
        method: String,
        /// Request path.
        path: String,
        /// The limit.
        seconds: u64,
    },
}

/// A REST client for one VMM's API socket.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    /// A client for `socket`; each call may take up to `timeout`.
    pub fn new(socket: &Path, timeout: Duration) -> ApiClient {
        ApiClient {
            socket: socket.to_owned(),
            timeout,
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`, returning the body.
    pub async fn get(&self, path: &str) -> Result<String, ApiError> {
        self.call("GET", path, None).await
    }

    /// `PUT path` with a JSON body (or none).
    pub async fn put(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<String, ApiError> {
        self.call("PUT", path, body).await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, body: &serde_json::Value) -> Result<String, ApiError> {
        self.call("PATCH", path, Some(body)).await
    }

    /// One request; returns the body of a 2xx answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<String, ApiError> {
        match tokio::time::timeout(self.timeout, self.exchange(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Timeout {
                method: method.to_owned(),
                path: path.to_owned(),
                seconds: self.timeout.as_secs(),
            }),
        }
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<String, ApiError> {
        let transport = |error: TransportError| ApiError::Transport {
            method: method.to_owned(),
            path: path.to_owned(),
            socket: self.socket.clone(),
            error,
        };
        let http = |e: hyper::Error| transport(TransportError::Http(Arc::new(e)));
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| transport(TransportError::Connect(Arc::new(e))))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        // The connection task ends when the request is done or the socket closes.
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = hyper::Request::builder()
            .method(method)
            // Origin-form request target, as servers expect from a client.
            .uri(path)
            .header("Host", "localhost")
            .header("Accept", "application/json");
        if body.is_some() {
            req = req.header("Content-Type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| transport(TransportError::Request(Arc::new(e))))?;
        let result = async {
            let resp = sender.send_request(req).await.map_err(http)?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
            let text = String::from_utf8_lossy(&body).into_owned();
            if status.is_success() {
                Ok(text)
            } else {
                Err(ApiError::Status {
                    method: method.to_owned(),
                    path: path.to_owned(),
                    status: status.as_u16(),
                    message: vmm_message(&text),
                })
            }
        }
        .await;
        conn.abort();
        result
    }
}

/// Why the HTTP exchange with the API socket broke.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The socket does not accept connections.
    #[error("{}", crate::errors::os_reason(.0))]
    Connect(#[source] Arc<std::io::Error>),
    /// The request could not be built.
    #[error("{0}")]
    Request(#[source] Arc<hyper::http::Error>),
    /// The HTTP exchange failed.
    #[error("{0}")]
    Http(#[source] Arc<hyper::Error>),
}

/// The VMM's own error text: firecracker's `fault_message`, else the body.
pub fn vmm_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        if let Some(m) = v.get("fault_message").and_then(|m| m.as_str()) {
            return m.trim().to_owned();
        }
    }
    let t = body.trim();
    if t.is_empty() {
        "(empty answer)".to_owned()
    } else {
        t.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_messages_are_extracted() {
        assert_eq!(
            vmm_message(r#"{"fault_message":"The vCPU number is invalid!"}"#),
            "The vCPU number is invalid!"
        );
        assert_eq!(vmm_message("Error from API\n"), "Error from API");
        assert_eq!(vmm_message(""), "(empty answer)");
    }
}
