//! corral's client library: the daemon's API as typed wire types ([`wire`]), and the
//! HTTP client ([`http`]) the CLI uses.
//!
//! **Architecture invariant:** nothing here knows the daemon's internals; the wire types
//! are the JSON contract, shared by the daemon's handlers and every client.

pub mod http;
pub mod wire;

pub use http::{enc, load_token, Client, ClientError};
