//! Settings of the llama.cpp features, from flags, environment and config file.
//!
//! Precedence: flag > environment > config file > default. Environment names:
//! `CORRAL_LLAMA_*` for the coordinator, and for compatibility with existing setups
//! `SOLLOL_RPC_HEARTBEAT_INTERVAL`, `SOLLOL_RPC_BACKEND_HEARTBEAT`,
//! `SOLLOL_RPC_BACKEND_HEARTBEAT_INTERVAL`, `SOLLOL_OBSERVER_MAX_EVENTS`,
//! `SOLLOL_OBSERVER_SAMPLING`, `SOLLOL_OBSERVER_SAMPLE_RATE`.
//! Unknown config keys and wrong types are errors naming the file, the key and the type.

use anyhow::{bail, Context};
use corral_daemon::bus::ObserverConfig;
use corral_daemon::kinds::llama::LlamaConfig;
use std::path::Path;
use std::time::Duration;

/// `corral serve` flags for the llama features (each also read from its environment name).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LlamaServeArgs {
    /// Seconds between coordinator heartbeat events.
    #[arg(long, env = "SOLLOL_RPC_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<f64>,
    /// Check the configured rpc backends periodically (true/false).
    #[arg(long, env = "SOLLOL_RPC_BACKEND_HEARTBEAT")]
    pub backend_heartbeat: Option<String>,
    /// Seconds between backend checks.
    #[arg(long, env = "SOLLOL_RPC_BACKEND_HEARTBEAT_INTERVAL")]
    pub backend_heartbeat_interval: Option<f64>,
}

pub fn parse_bool(name: &str, v: &str) -> anyhow::Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => bail!("{name}=`{v}` is not a boolean; use true or false"),
    }
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v > 0.0 && v < 86_400.0 * 365.0) {
        bail!("{name} must be a positive number of seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

impl LlamaServeArgs {
    pub fn config(&self) -> anyhow::Result<LlamaConfig> {
        let d = LlamaConfig::default();
        Ok(LlamaConfig {
            coordinator_heartbeat: match self.heartbeat_interval {
                Some(v) => secs("SOLLOL_RPC_HEARTBEAT_INTERVAL", v)?,
                None => d.coordinator_heartbeat,
            },
            backend_heartbeat: match &self.backend_heartbeat {
                Some(v) => parse_bool("SOLLOL_RPC_BACKEND_HEARTBEAT", v)?,
                None => d.backend_heartbeat,
            },
            backend_heartbeat_interval: match self.backend_heartbeat_interval {
                Some(v) => secs("SOLLOL_RPC_BACKEND_HEARTBEAT_INTERVAL", v)?,
                None => d.backend_heartbeat_interval,
            },
        })
    }
}

/// The observer store's settings from `SOLLOL_OBSERVER_*`.
pub fn observer_config() -> anyhow::Result<ObserverConfig> {
    let mut c = ObserverConfig::default();
    if let Ok(v) = std::env::var("SOLLOL_OBSERVER_MAX_EVENTS") {
        c.max_events = v.trim().parse().ok().filter(|n| *n > 0).with_context(|| {
            format!("SOLLOL_OBSERVER_MAX_EVENTS=`{v}` is not a positive integer")
        })?;
    }
    if let Ok(v) = std::env::var("SOLLOL_OBSERVER_SAMPLING") {
        c.sampling = parse_bool("SOLLOL_OBSERVER_SAMPLING", &v)?;
    }
    if let Ok(v) = std::env::var("SOLLOL_OBSERVER_SAMPLE_RATE") {
        c.sample_rate = v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .with_context(|| {
                format!("SOLLOL_OBSERVER_SAMPLE_RATE=`{v}` is not a number between 0 and 1")
            })?;
    }
    Ok(c)
}

/// The coordinator keys of a config file (TOML, or JSON for a `.json` file).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FileSettings {
    pub llama_server_host: Option<String>,
    pub llama_server_port: Option<u16>,
    pub llama_model_path: Option<String>,
    pub server_args: Option<Vec<String>>,
    pub n_gpu_layers: Option<i64>,
    pub ctx_size: Option<i64>,
    pub rpc_backends: Option<Vec<String>>,
    pub llama_server_bin: Option<String>,
}

/// Reads a config file, rejecting unknown keys and wrong types by name.
pub fn read_file(path: &Path) -> anyhow::Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let shown = path.display();
    let value: serde_json::Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("{shown} is not valid JSON"))?
    } else {
        let t: toml::Table =
            toml::from_str(&text).with_context(|| format!("{shown} is not valid TOML"))?;
        serde_json::to_value(t)?
    };
    let obj = value
        .as_object()
        .with_context(|| format!("{shown}: the top level must be a table of keys"))?;
    let mut s = FileSettings::default();
    for (key, v) in obj {
        let wrong = |ty: &str| anyhow::anyhow!("{shown}: key `{key}` must be {ty}, got {v}");
        let string = || {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| wrong("a string"))
        };
        let int = || v.as_i64().ok_or_else(|| wrong("an integer"));
        // A list of strings, or one comma-separated string.
        let list = || -> anyhow::Result<Vec<String>> {
            if let Some(s) = v.as_str() {
                return Ok(s
                    .split([',', ' '])
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect());
            }
            v.as_array()
                .and_then(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect())
                .ok_or_else(|| wrong("a list of strings"))
        };
        match key.as_str() {
            "llama_server_host" => s.llama_server_host = Some(string()?),
            "llama_server_port" => {
                s.llama_server_port = Some(u16::try_from(int()?).map_err(|_| wrong("a port number (0-65535)"))?)
            }
            "llama_model_path" => s.llama_model_path = Some(string()?),
            "server_args" => s.server_args = Some(list()?),
            "n_gpu_layers" => s.n_gpu_layers = Some(int()?),
            "ctx_size" => s.ctx_size = Some(int()?),
            "rpc_backends" => s.rpc_backends = Some(list()?),
            "llama_server_bin" => s.llama_server_bin = Some(string()?),
            _ => bail!(
                "{shown}: unknown key `{key}`; known keys: llama_server_host, llama_server_port, \
                 llama_model_path, server_args, n_gpu_layers, ctx_size, rpc_backends, llama_server_bin"
            ),
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn reads_toml_and_json() {
        let (_d, p) = write(
            "c.toml",
            "llama_server_port = 8081\nllama_model_path = \"m.gguf\"\nrpc_backends = [\"10.0.0.2:50052\"]\nserver_args = \"--threads 8\"\nn_gpu_layers = 99\n",
        );
        let s = read_file(&p).unwrap();
        assert_eq!(s.llama_server_port, Some(8081));
        assert_eq!(s.rpc_backends.unwrap(), ["10.0.0.2:50052"]);
        assert_eq!(s.server_args.unwrap(), ["--threads", "8"]);
        let (_d, p) = write(
            "c.json",
            r#"{"ctx_size": 2048, "llama_server_host": "0.0.0.0"}"#,
        );
        let s = read_file(&p).unwrap();
        assert_eq!(
            (s.ctx_size, s.llama_server_host.as_deref()),
            (Some(2048), Some("0.0.0.0"))
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_file_key_and_type() {
        let (_d, p) = write("c.toml", "llama_server_prot = 1\n");
        let e = read_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("c.toml") && e.contains("unknown key `llama_server_prot`"),
            "{e}"
        );
        let (_d, p) = write("c.toml", "llama_server_port = \"eighty\"\n");
        let e = read_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("key `llama_server_port` must be an integer"),
            "{e}"
        );
        let (_d, p) = write("c.toml", "llama_server_port = 99999\n");
        let e = read_file(&p).unwrap_err().to_string();
        assert!(e.contains("a port number"), "{e}");
    }

    #[test]
    fn booleans_and_intervals() {
        assert!(parse_bool("X", "TRUE").unwrap());
        assert!(!parse_bool("X", "0").unwrap());
        assert!(parse_bool("X", "maybe")
            .unwrap_err()
            .to_string()
            .contains("X=`maybe`"));
        let a = LlamaServeArgs {
            heartbeat_interval: Some(-1.0),
            ..Default::default()
        };
        assert!(a.config().is_err());
    }
}
