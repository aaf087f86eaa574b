//! The CLI's HTTP client of the daemon: base address, token, and errors that say what
//! to do.

use anyhow::{anyhow, bail, Context};
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Clone)]
pub struct Client {
    pub base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// Reads the token: `CORRAL_TOKEN`, else the first line of the token file.
pub fn load_token(token_file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.is_empty() {
            bail!("the token file {} is empty", path.display());
        }
        return Ok(Some(token));
    }
    Ok(std::env::var("CORRAL_TOKEN").ok().filter(|t| !t.is_empty()))
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
        let r = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends and turns transport errors and JSON error bodies into readable errors.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("the daemon answered {status}: {}", body.trim()));
        Err(ApiFailure { message: msg }.into())
    }

    pub fn transport_error(&self, e: reqwest::Error) -> anyhow::Error {
        if e.is_connect() {
            anyhow!(
                "cannot reach the corral daemon at {}: is it running? start it with `corral serve` \
                 (or `corral demo`), or point --addr / CORRAL_ADDR at it",
                self.base
            )
        } else {
            anyhow!("talking to the corral daemon at {}: {e}", self.base)
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self.send(self.request(reqwest::Method::GET, path)).await?;
        resp.json().await.context("reading the daemon's answer")
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> anyhow::Result<T> {
        let resp = self
            .send(self.request(reqwest::Method::POST, path).json(body))
            .await?;
        resp.json().await.context("reading the daemon's answer")
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .send(self.request(reqwest::Method::DELETE, path))
            .await?;
        resp.json().await.context("reading the daemon's answer")
    }
}

/// An error the daemon answered with.
#[derive(Debug)]
pub struct ApiFailure {
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiFailure {}

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
