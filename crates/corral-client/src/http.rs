//! The HTTP client of the daemon's API: base address, token, typed requests and
//! answers, and errors that say what to do.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::wire::ErrorBody;

#[derive(Clone)]
pub struct Client {
    pub base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the corral daemon at {base}: is it running? start it with `corral serve` \
         (or `corral demo`), or point --addr / CORRAL_ADDR at it"
    )]
    Unreachable { base: String },
    #[error("talking to the corral daemon at {base}: {source}")]
    Transport {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    /// The daemon answered with an error; `message` is its own words.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("reading the daemon's answer: {0}")]
    Decode(#[source] reqwest::Error),
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {0} is empty")]
    EmptyTokenFile(String),
}

/// Reads the token: the first line of `token_file` when one is given, else
/// `CORRAL_TOKEN`, else the daemon's own `<home>/token` (readable only by the daemon's
/// user: other users and web pages cannot drive it).
pub fn load_token(
    token_file: Option<&std::path::Path>,
    home: Option<&std::path::Path>,
) -> Result<Option<String>, ClientError> {
    if let Some(path) = token_file {
        return read_token_file(path).map(Some);
    }
    if let Some(t) = std::env::var("CORRAL_TOKEN").ok().filter(|t| !t.is_empty()) {
        return Ok(Some(t));
    }
    let home = home.map_or_else(crate::default_home, std::path::Path::to_path_buf);
    let path = home.join(crate::TOKEN_FILE);
    // Missing or unreadable (another user's daemon): go without, and let the daemon's
    // 401 say what to do.
    Ok(read_token_file(&path).ok())
}

fn read_token_file(path: &std::path::Path) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClientError::TokenFile {
        path: path.display().to_string(),
        source,
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(ClientError::EmptyTokenFile(path.display().to_string()));
    }
    Ok(token)
}

impl Client {
    pub fn new(addr: &str, token: Option<String>) -> Client {
        let base = if addr.contains("://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", addr.trim_end_matches('/'))
        };
        Client {
            base,
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(5))
                .build()
                .expect("building the HTTP client"),
            token,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, self.url(path)).header(
            crate::CLIENT_HEADER,
            concat!("corral/", env!("CARGO_PKG_VERSION")),
        );
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends and turns transport errors and JSON error bodies into [`ClientError`]s.
    pub async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&body) {
            Ok(e) => ClientError::Api {
                status: status.as_u16(),
                code: e.error.code,
                message: e.error.message,
            },
            Err(_) => ClientError::Api {
                status: status.as_u16(),
                code: "http".into(),
                message: format!("the daemon answered {status}: {}", body.trim()),
            },
        })
    }

    pub fn transport_error(&self, e: reqwest::Error) -> ClientError {
        if e.is_connect() {
            ClientError::Unreachable {
                base: self.base.clone(),
            }
        } else {
            ClientError::Transport {
                base: self.base.clone(),
                source: e,
            }
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.send(self.request(reqwest::Method::GET, path)).await?;
        resp.json().await.map_err(ClientError::Decode)
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let resp = self
            .send(self.request(reqwest::Method::POST, path).json(body))
            .await?;
        resp.json().await.map_err(ClientError::Decode)
    }

    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let resp = self
            .send(self.request(reqwest::Method::PUT, path).json(body))
            .await?;
        resp.json().await.map_err(ClientError::Decode)
    }

    /// `GET /api/v1/gpu`: the GPUs, their processes and the tasks those belong to.
    pub async fn gpu(&self) -> Result<crate::wire::GpuSnapshot, ClientError> {
        self.get("/gpu").await
    }

    /// `GET /api/v1/gpu?host=…`: another machine's GPUs, read by the daemon over SSH.
    pub async fn gpu_of(&self, host: &str) -> Result<crate::wire::GpuSnapshot, ClientError> {
        self.get(&format!("/gpu?host={}", crate::enc(host))).await
    }

    /// `GET /api/v1/nodes`: the fleet as a hub reads it (a hub only).
    pub async fn nodes(&self) -> Result<crate::wire::NodesAnswer, ClientError> {
        self.get("/nodes").await
    }

    /// `GET /api/v1/publishers/redis`.
    pub async fn redis_status(&self) -> Result<crate::wire::RedisStatus, ClientError> {
        self.get("/publishers/redis").await
    }

    /// `PUT /api/v1/publishers/redis`: changes (and keeps) the publisher's settings.
    pub async fn redis_update(
        &self,
        update: &crate::wire::RedisUpdate,
    ) -> Result<crate::wire::RedisStatus, ClientError> {
        self.put("/publishers/redis", update).await
    }

    /// The daemon's alert rules and their counters.
    pub async fn alerts(&self) -> Result<Vec<crate::wire::AlertRuleStatus>, ClientError> {
        self.get("/alerts").await
    }

    /// Sends a test message through alert rule `name`.
    pub async fn alert_test(
        &self,
        name: &str,
    ) -> Result<crate::wire::AlertRuleStatus, ClientError> {
        self.post(
            &format!("/alerts/{}/test", enc(name)),
            &serde_json::json!({}),
        )
        .await
    }

    /// The diagnostics summary of a failed run.
    pub async fn diagnostics(&self, run_id: &str) -> Result<crate::wire::Diagnostics, ClientError> {
        self.get(&format!("/runs/{}/diagnostics", enc(run_id)))
            .await
    }

    /// A failed run's whole diagnostics bundle, as a `.tar.gz`.
    pub async fn diagnostics_tar(&self, run_id: &str) -> Result<Vec<u8>, ClientError> {
        let resp = self
            .send(self.request(
                reqwest::Method::GET,
                &format!("/runs/{}/diagnostics.tar.gz", enc(run_id)),
            ))
            .await?;
        resp.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| self.transport_error(e))
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self
            .send(self.request(reqwest::Method::DELETE, path))
            .await?;
        resp.json().await.map_err(ClientError::Decode)
    }
}

/// The API path of a task: `/tasks/NAME`, or for `NODE/NAME` (a task on another node,
/// through a hub) `/nodes/NODE/tasks/NAME`. Task names never hold a `/`.
pub fn task_path(name: &str) -> String {
    match name.split_once('/') {
        Some((node, task)) => format!("/nodes/{}/tasks/{}", enc(node), enc(task)),
        None => format!("/tasks/{}", enc(name)),
    }
}

/// The API path of runs (`/runs?`, then query parameters), for a task name as
/// [`task_path`] takes it: `NODE/NAME` asks the hub for that node's runs.
pub fn runs_path(name: Option<&str>) -> String {
    match name.map(|n| (n, n.split_once('/'))) {
        Some((_, Some((node, task)))) => format!("/nodes/{}/runs?task={}&", enc(node), enc(task)),
        Some((n, None)) => format!("/runs?task={}&", enc(n)),
        None => "/runs?".to_string(),
    }
}

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
