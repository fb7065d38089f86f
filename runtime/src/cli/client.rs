//! The CLI's HTTP client: one HTTP/1.1 connection per request through
//! hyper's client connection (already in the tree through axum).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// How long connecting to the node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a non-streaming request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a request failed; [`exit_code`](Self::exit_code) maps it to the
/// CLI's exit codes.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node could not be reached.
    #[error("cannot reach the node at {addr}: {reason}")]
    Unreachable {
        /// The control address tried.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The node refused the token.
    #[error("the node at {addr} refused the token: {message}")]
    Unauthorized {
        /// The control address.
        addr: String,
        /// The node's message.
        message: String,
    },
    /// The node answered with an error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error code.
        code: String,
        /// The node's message.
        message: String,
    },
    /// The command was used wrongly (no token, an unreadable input file).
    #[error("{0}")]
    Usage(String),
    /// The operation failed on this side.
    #[error("{0}")]
    Failed(String),
}

impl ClientError {
    /// 1 the operation failed, 2 usage, 3 unreachable or token refused.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Unreachable { .. } | Self::Unauthorized { .. } => 3,
            Self::Usage(_) => 2,
            Self::Api { .. } | Self::Failed(_) => 1,
        }
    }
}

/// Where the node is and the token to show it.
#[derive(Debug, Clone)]
pub struct Client {
    addr: String,
    token: String,
}

/// Finds the token: `--token-file`, else `CELLMESH_TOKEN`, else the
/// default data directory's token file.
pub fn resolve_token(token_file: Option<&PathBuf>) -> Result<String, ClientError> {
    if let Some(path) = token_file {
        return std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| ClientError::Usage(format!("token file {}: {e}", path.display())));
    }
    if let Some(token) = std::env::var("CELLMESH_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Ok(token.trim().to_string());
    }
    let default =
        PathBuf::from(crate::config::DEFAULT_DATA_DIR).join(crate::config::TOKEN_FILE_NAME);
    std::fs::read_to_string(&default)
        .map(|t| t.trim().to_string())
        .map_err(|_| {
            ClientError::Usage(format!(
                "no control token: pass --token-file PATH, set CELLMESH_TOKEN, or run where {} exists",
                default.display()
            ))
        })
}

impl Client {
    /// A client of the node at `addr` (`host:port`, an `http://` prefix
    /// allowed).
    pub fn new(addr: &str, token: String) -> Self {
        let addr = addr
            .trim()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        Self { addr, token }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            addr: self.addr.clone(),
            reason,
        };
        let addr: SocketAddr = match self.addr.parse() {
            Ok(a) => a,
            Err(_) => tokio::net::lookup_host(&self.addr)
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .next()
                .ok_or_else(|| unreachable("the name resolves to no address".into()))?,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.addr)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Failed(format!("bad request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let raw = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Err(self.api_error(status, &raw))
    }

    fn api_error(&self, status: StatusCode, raw: &[u8]) -> ClientError {
        let parsed: Option<Value> = serde_json::from_slice(raw).ok();
        let field = |name: &str| {
            parsed
                .as_ref()
                .and_then(|v| v["error"][name].as_str())
                .map(str::to_owned)
        };
        let message =
            field("message").unwrap_or_else(|| String::from_utf8_lossy(raw).trim().to_string());
        if status == StatusCode::UNAUTHORIZED {
            return ClientError::Unauthorized {
                addr: self.addr.clone(),
                message,
            };
        }
        ClientError::Api {
            status: status.as_u16(),
            code: field("code").unwrap_or_else(|| "error".into()),
            message,
        }
    }

    /// A request whose whole answer is JSON.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Value, ClientError> {
        let exchange = async {
            let response = self.send(method, path, body).await?;
            let raw = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Failed(format!("reading the answer: {e}")))?
                .to_bytes();
            serde_json::from_slice(&raw)
                .map_err(|e| ClientError::Failed(format!("the node's answer is not JSON: {e}")))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Failed(format!("no answer within {REQUEST_TIMEOUT:?}")))?
    }

    /// A request whose answer is newline-delimited JSON, passed line by
    /// line to `each` as it arrives.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn stream(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        mut each: impl FnMut(Value),
    ) -> Result<(), ClientError> {
        let response = self.send(method, path, body).await?;
        let mut body = response.into_body();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Failed(format!("stream broke: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                    each(v);
                }
            }
        }
        Ok(())
    }
}
