//! A hub's reach into the nodes: a gRPC client per node, at the address its
//! registration gives (`crate::hub`), carrying the fleet token. Channels are made once per node and
//! address, connect lazily and reconnect by themselves.

use corral_client::grpc::corral_client::CorralClient;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// How long connecting to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A node's gRPC client, authenticated with the fleet token.
pub type NodeClient = CorralClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <fleet token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// Why a node cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("no node named `{0}` in the fleet; `corral nodes` lists them")]
    UnknownNode(String),
    #[error("{0}")]
    Unusable(String),
}

pub struct Remote {
    bearer: Option<Bearer>,
    channels: Mutex<HashMap<String, (String, Channel)>>,
}

impl Remote {
    pub fn new(fleet_token: Option<&str>) -> Remote {
        let bearer = fleet_token
            .and_then(|t| format!("Bearer {t}").parse().ok())
            .map(Bearer);
        Remote {
            bearer,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The client of `node`, whose gRPC API is at `addr` (`http://HOST:PORT`).
    pub fn client(&self, node: &str, addr: &str) -> Result<NodeClient, RemoteError> {
        let Some(bearer) = self.bearer.clone() else {
            return Err(RemoteError::Unusable(
                "this hub has no fleet token, so it cannot reach the nodes: start it and the nodes \
                 with the same --fleet-token-file FILE"
                    .into(),
            ));
        };
        if addr.is_empty() {
            return Err(RemoteError::Unusable(format!(
                "node `{node}` did not register a gRPC address (its corral is older than the hub's); \
                 upgrade it"
            )));
        }
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let channel = match channels.get(node) {
            Some((a, c)) if a == addr => c.clone(),
            _ => {
                let endpoint = Endpoint::from_shared(addr.to_string())
                    .map_err(|e| {
                        RemoteError::Unusable(format!(
                            "node `{node}` registered an unusable gRPC address `{addr}`: {e}"
                        ))
                    })?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .http2_keep_alive_interval(Duration::from_secs(15))
                    .keep_alive_while_idle(true);
                let c = endpoint.connect_lazy();
                channels.insert(node.to_string(), (addr.to_string(), c.clone()));
                c
            }
        };
        Ok(CorralClient::with_interceptor(channel, bearer))
    }
}
