//! corral's client library: the daemon's API as typed wire types ([`wire`]), and the
//! HTTP client ([`http`]) the CLI uses.
//!
//! **Architecture invariant:** nothing here knows the daemon's internals; the wire types
//! are the JSON contract, shared by the daemon's handlers and every client.

pub mod grpc;
pub mod http;
pub mod wire;

pub use http::{enc, load_token, runs_path, task_path, Client, ClientError};

use std::path::PathBuf;

/// The daemon's default home: `$CORRAL_HOME`, else `$XDG_DATA_HOME/corral`, else
/// `~/.local/share/corral`. The CLI finds the daemon's token there.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("CORRAL_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("corral");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/corral"),
        None => PathBuf::from(".corral"),
    }
}

/// The file in a daemon's home that holds its API token (mode 0600).
pub const TOKEN_FILE: &str = "token";

/// The header every request of this client carries. A browser cannot send it cross-site
/// without a preflight the daemon never grants, so a request that has it (or a token) was
/// not forged by a web page.
pub const CLIENT_HEADER: &str = "x-corral-client";
