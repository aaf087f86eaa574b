//! Settings of the llama.cpp features and of the Redis publisher, from flags,
//! environment and config file.
//!
//! Precedence: flag > environment > config file > default. Environment names:
//! `CORRAL_LLAMA_*` for the coordinator, and for compatibility with existing setups
//! `SOLLOL_RPC_HEARTBEAT_INTERVAL`, `SOLLOL_RPC_BACKEND_HEARTBEAT`,
//! `SOLLOL_RPC_BACKEND_HEARTBEAT_INTERVAL`, `SOLLOL_OBSERVER_MAX_EVENTS`,
//! `SOLLOL_OBSERVER_SAMPLING`, `SOLLOL_OBSERVER_SAMPLE_RATE`. Redis (see
//! [`RedisServeArgs`]): `CORRAL_REDIS_ENABLED`, `REDIS_HOST`, `REDIS_PORT`, `REDIS_DB`,
//! `REDIS_PASSWORD`, `CORRAL_REDIS_USERNAME`, `CORRAL_REDIS_URL` (else
//! `SOLLOL_REDIS_URL`), `CORRAL_REDIS_CHANNEL_PREFIX`, `CORRAL_REDIS_STREAM_MAXLEN`,
//! `CORRAL_REDIS_TLS_CA`, `CORRAL_REDIS_RAW_LINES`, `CORRAL_REDIS_RAW_LINES_PER_SECOND`.
//! Unknown config keys and wrong types are errors naming the file, the key and the type.

use anyhow::{bail, Context};
use corral_daemon::bus::ObserverConfig;
use corral_daemon::kinds::llama::LlamaConfig;
use corral_daemon::sinks::redis::{RawLines, RedisConfig};
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
    pub redis: RedisFile,
    /// `[[alerts]]`: the alert rules.
    pub alerts: Vec<corral_daemon::sinks::alerts::Rule>,
}

/// The Redis keys of a config file (read by `corral serve --config`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RedisFile {
    pub redis_logging_enabled: Option<bool>,
    pub redis_host: Option<String>,
    pub redis_port: Option<u16>,
    pub redis_db: Option<i64>,
    pub redis_username: Option<String>,
    pub redis_password: Option<String>,
    pub redis_url: Option<String>,
    pub channel_prefix: Option<String>,
    pub stream_maxlen: Option<u64>,
    pub redis_tls_ca: Option<String>,
    pub raw_lines: Option<RawLines>,
    pub raw_lines_per_second: Option<u64>,
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
        let boolean = || {
            v.as_bool()
                .ok_or_else(|| wrong("a boolean (true or false)"))
        };
        let port = || u16::try_from(int()?).map_err(|_| wrong("a port number (0-65535)"));
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
            "llama_server_port" => s.llama_server_port = Some(port()?),
            "llama_model_path" => s.llama_model_path = Some(string()?),
            "server_args" => s.server_args = Some(list()?),
            "n_gpu_layers" => s.n_gpu_layers = Some(int()?),
            "ctx_size" => s.ctx_size = Some(int()?),
            "rpc_backends" => s.rpc_backends = Some(list()?),
            "llama_server_bin" => s.llama_server_bin = Some(string()?),
            "redis_logging_enabled" => s.redis.redis_logging_enabled = Some(boolean()?),
            "redis_host" => s.redis.redis_host = Some(string()?),
            "redis_port" => s.redis.redis_port = Some(port()?),
            "redis_db" => {
                s.redis.redis_db = Some(int()?).filter(|d| *d >= 0).map(Some).ok_or_else(|| wrong("a database number (0 or more)"))?
            }
            "redis_username" => s.redis.redis_username = Some(string()?),
            "redis_password" => s.redis.redis_password = Some(string()?),
            // Shown as `<hidden>` in an error: it may hold a password.
            "redis_url" => {
                s.redis.redis_url = Some(v.as_str().map(str::to_string).ok_or_else(|| {
                    anyhow::anyhow!("{shown}: key `redis_url` must be a string")
                })?)
            }
            "channel_prefix" => s.redis.channel_prefix = Some(string()?),
            "alerts" => {
                let rules = v
                    .as_array()
                    .ok_or_else(|| wrong("a list of tables ([[alerts]] in TOML)"))?;
                for (i, r) in rules.iter().enumerate() {
                    let rule: corral_daemon::sinks::alerts::Rule =
                        serde_json::from_value(r.clone())
                            .map_err(|e| anyhow::anyhow!("{shown}: alerts[{i}]: {e}"))?;
                    rule.check()
                        .map_err(|e| anyhow::anyhow!("{shown}: alerts[{i}]: {e}"))?;
                    s.alerts.push(rule);
                }
            }
            "stream_maxlen" => {
                s.redis.stream_maxlen = Some(
                    u64::try_from(int()?)
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| wrong("a positive integer"))?,
                )
            }
            "redis_tls_ca" => s.redis.redis_tls_ca = Some(string()?),
            "raw_lines" => {
                s.redis.raw_lines = Some(
                    string()?
                        .parse()
                        .map_err(|_| wrong("one of \"important\", \"all\", \"none\""))?,
                )
            }
            "raw_lines_per_second" => {
                s.redis.raw_lines_per_second = Some(
                    u64::try_from(int()?)
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| wrong("a positive integer"))?,
                )
            }
            _ => bail!(
                "{shown}: unknown key `{key}`; known keys: llama_server_host, llama_server_port, \
                 llama_model_path, server_args, n_gpu_layers, ctx_size, rpc_backends, llama_server_bin, \
                 redis_logging_enabled, redis_host, redis_port, redis_db, redis_username, \
                 redis_password, redis_url, channel_prefix, stream_maxlen, redis_tls_ca, \
                 raw_lines, raw_lines_per_second, alerts ([[alerts]] tables)"
            ),
        }
    }
    Ok(s)
}

/// `corral serve` flags of the Redis publisher. No flag takes a password (it would show
/// in the process list): give it in `REDIS_PASSWORD`, the config file, or a URL in the
/// environment.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RedisServeArgs {
    /// Publish events to Redis [env: CORRAL_REDIS_ENABLED; config: redis_logging_enabled].
    #[arg(long)]
    pub redis: bool,
    /// Redis host [env: REDIS_HOST; config: redis_host; default: localhost].
    #[arg(long, value_name = "HOST")]
    pub redis_host: Option<String>,
    /// Redis port [env: REDIS_PORT; config: redis_port; default: 6379].
    #[arg(long, value_name = "PORT")]
    pub redis_port: Option<u16>,
    /// Redis database number [env: REDIS_DB; config: redis_db; default: 0].
    #[arg(long, value_name = "N")]
    pub redis_db: Option<i64>,
    /// Redis user name (ACL) [env: CORRAL_REDIS_USERNAME; config: redis_username].
    #[arg(long, value_name = "NAME")]
    pub redis_username: Option<String>,
    /// Prefix of the channels and the stream [env: CORRAL_REDIS_CHANNEL_PREFIX; config:
    /// channel_prefix; default: corral:llama_cpp].
    #[arg(long, value_name = "PREFIX")]
    pub redis_channel_prefix: Option<String>,
    /// Approximate length the stream is trimmed to [env: CORRAL_REDIS_STREAM_MAXLEN;
    /// config: stream_maxlen; default: 100000].
    #[arg(long, value_name = "N")]
    pub redis_stream_maxlen: Option<u64>,
    /// PEM file of the CA that signed the Redis server's certificate, for a rediss:// URL
    /// [env: CORRAL_REDIS_TLS_CA; config: redis_tls_ca; default: the system's roots].
    #[arg(long, value_name = "FILE")]
    pub redis_tls_ca: Option<String>,
    /// Which lines of the runs go to {prefix}:raw: important, all or none
    /// [env: CORRAL_REDIS_RAW_LINES; config: raw_lines; default: important].
    #[arg(long, value_name = "WHICH")]
    pub redis_raw_lines: Option<RawLines>,
    /// The most raw lines published per second; more are counted as held back
    /// [env: CORRAL_REDIS_RAW_LINES_PER_SECOND; config: raw_lines_per_second; default: 1000].
    #[arg(long, value_name = "N")]
    pub redis_raw_lines_per_second: Option<u64>,
}

impl RedisServeArgs {
    /// The publisher's settings: flag > environment (through `env`) > `file` > default.
    /// A URL (`CORRAL_REDIS_URL`, else `SOLLOL_REDIS_URL`, else `redis_url`) replaces
    /// host, port, db and credentials.
    pub fn config(
        &self,
        file: &RedisFile,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<RedisConfig> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let d = RedisConfig::default();
        let num = |k: &str| -> anyhow::Result<Option<i64>> {
            env(k)
                .map(|v| {
                    v.trim()
                        .parse::<i64>()
                        .ok()
                        .filter(|n| *n >= 0)
                        .with_context(|| format!("{k}=`{v}` is not a non-negative integer"))
                })
                .transpose()
        };
        let enabled = if self.redis {
            true
        } else if let Some(v) = env("CORRAL_REDIS_ENABLED") {
            parse_bool("CORRAL_REDIS_ENABLED", &v)?
        } else {
            file.redis_logging_enabled.unwrap_or(d.enabled)
        };
        let port = match (self.redis_port, num("REDIS_PORT")?) {
            (Some(p), _) => Some(p),
            (None, Some(p)) => Some(
                u16::try_from(p)
                    .ok()
                    .context("REDIS_PORT is not a port number (0-65535)")?,
            ),
            (None, None) => file.redis_port,
        };
        let stream_maxlen = match self.redis_stream_maxlen {
            Some(n) => Some(n),
            None => num("CORRAL_REDIS_STREAM_MAXLEN")?.map(|n| n as u64),
        }
        .or(file.stream_maxlen)
        .unwrap_or(d.stream_maxlen);
        if stream_maxlen == 0 {
            bail!("the Redis stream length (--redis-stream-maxlen, CORRAL_REDIS_STREAM_MAXLEN, stream_maxlen) must be at least 1");
        }
        let raw_lines = match self.redis_raw_lines {
            Some(r) => Some(r),
            None => env("CORRAL_REDIS_RAW_LINES")
                .map(|v| {
                    v.parse::<RawLines>()
                        .map_err(|e| anyhow::anyhow!("CORRAL_REDIS_RAW_LINES: {e}"))
                })
                .transpose()?,
        }
        .or(file.raw_lines)
        .unwrap_or(d.raw_lines);
        let raw_lines_per_second = match self.redis_raw_lines_per_second {
            Some(n) => Some(n),
            None => num("CORRAL_REDIS_RAW_LINES_PER_SECOND")?.map(|n| n as u64),
        }
        .or(file.raw_lines_per_second)
        .unwrap_or(d.raw_lines_per_second);
        let c = RedisConfig {
            enabled,
            host: self
                .redis_host
                .clone()
                .or_else(|| env("REDIS_HOST"))
                .or_else(|| file.redis_host.clone())
                .unwrap_or(d.host),
            port: port.unwrap_or(d.port),
            db: self
                .redis_db
                .or(num("REDIS_DB")?)
                .or(file.redis_db)
                .unwrap_or(d.db),
            username: self
                .redis_username
                .clone()
                .or_else(|| env("CORRAL_REDIS_USERNAME"))
                .or_else(|| file.redis_username.clone()),
            password: env("REDIS_PASSWORD").or_else(|| file.redis_password.clone()),
            url: env("CORRAL_REDIS_URL")
                .or_else(|| env("SOLLOL_REDIS_URL"))
                .or_else(|| file.redis_url.clone()),
            channel_prefix: self
                .redis_channel_prefix
                .clone()
                .or_else(|| env("CORRAL_REDIS_CHANNEL_PREFIX"))
                .or_else(|| file.channel_prefix.clone())
                .unwrap_or(d.channel_prefix),
            stream_maxlen,
            tls_ca: self
                .redis_tls_ca
                .clone()
                .or_else(|| env("CORRAL_REDIS_TLS_CA"))
                .or_else(|| file.redis_tls_ca.clone()),
            raw_lines,
            raw_lines_per_second,
        };
        c.validate().map_err(|e| anyhow::anyhow!(e))?;
        Ok(c)
    }
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
    fn redis_keys_in_toml_and_json() {
        let (_d, p) = write(
            "c.toml",
            "redis_logging_enabled = true\nredis_host = \"h\"\nredis_port = 7000\nchannel_prefix = \"x:y\"\nstream_maxlen = 50\n",
        );
        let r = read_file(&p).unwrap().redis;
        assert_eq!(
            (r.redis_logging_enabled, r.redis_port, r.stream_maxlen),
            (Some(true), Some(7000), Some(50))
        );
        let (_d, p) = write("c.json", r#"{"redis_db": 2, "redis_password": "pw"}"#);
        let r = read_file(&p).unwrap().redis;
        assert_eq!(
            (r.redis_db, r.redis_password.as_deref()),
            (Some(2), Some("pw"))
        );
        let (_d, p) = write("c.toml", "redis_logging_enabled = \"yes\"\n");
        let e = read_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("c.toml") && e.contains("`redis_logging_enabled` must be a boolean"),
            "{e}"
        );
        let (_d, p) = write("c.toml", "redis_url = 5\n");
        let e = read_file(&p).unwrap_err().to_string();
        assert!(e.contains("`redis_url` must be a string"), "{e}");
    }

    #[test]
    fn redis_precedence_is_flag_then_environment_then_file_then_default() {
        let file = RedisFile {
            redis_logging_enabled: Some(true),
            redis_host: Some("file-host".into()),
            redis_port: Some(1111),
            redis_db: Some(1),
            redis_password: Some("file-pw".into()),
            channel_prefix: Some("file:p".into()),
            ..Default::default()
        };
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let none = RedisServeArgs::default();
        let c = none.config(&file, env(&[])).unwrap();
        assert_eq!(
            (
                c.enabled,
                c.host.as_str(),
                c.port,
                c.db,
                c.password.as_deref()
            ),
            (true, "file-host", 1111, 1, Some("file-pw"))
        );
        let c = none
            .config(
                &file,
                env(&[
                    ("CORRAL_REDIS_ENABLED", "false"),
                    ("REDIS_HOST", "env-host"),
                    ("REDIS_PORT", "2222"),
                    ("REDIS_PASSWORD", "env-pw"),
                    ("SOLLOL_REDIS_URL", "redis://sollol:3333"),
                ]),
            )
            .unwrap();
        assert_eq!(
            (c.enabled, c.host.as_str(), c.port, c.password.as_deref()),
            (false, "env-host", 2222, Some("env-pw"))
        );
        assert_eq!(c.server(), "sollol:3333");
        let flags = RedisServeArgs {
            redis: true,
            redis_host: Some("flag-host".into()),
            redis_port: Some(4444),
            ..Default::default()
        };
        let c = flags
            .config(
                &file,
                env(&[("CORRAL_REDIS_ENABLED", "false"), ("REDIS_PORT", "2222")]),
            )
            .unwrap();
        assert_eq!(
            (c.enabled, c.host.as_str(), c.port),
            (true, "flag-host", 4444)
        );
        assert_eq!(c.channel_prefix, "file:p");
        let d = none.config(&RedisFile::default(), env(&[])).unwrap();
        assert_eq!(
            (d.enabled, d.channel_prefix.as_str(), d.stream_maxlen),
            (false, "corral:llama_cpp", 100_000)
        );
        let e = none
            .config(&RedisFile::default(), env(&[("REDIS_PORT", "http")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("REDIS_PORT=`http`"), "{e}");
        let e = none
            .config(
                &RedisFile::default(),
                env(&[("CORRAL_REDIS_URL", "bogus://u:hunter2@x")]),
            )
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2") && e.contains("redis://"), "{e}");
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

    #[test]
    fn tls_and_raw_line_settings_from_file_and_environment() {
        let (_d, p) = write(
            "c.toml",
            "redis_url = \"rediss://h:6380\"\nredis_tls_ca = \"/etc/ca.pem\"\nraw_lines = \"all\"\nraw_lines_per_second = 50\n",
        );
        let f = read_file(&p).unwrap().redis;
        assert_eq!(f.redis_tls_ca.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(
            (f.raw_lines, f.raw_lines_per_second),
            (Some(RawLines::All), Some(50))
        );
        let none = RedisServeArgs::default();
        let c = none.config(&f, |_| None).unwrap();
        assert!(c.is_tls());
        assert_eq!(c.tls_ca.as_deref(), Some("/etc/ca.pem"));
        assert_eq!((c.raw_lines, c.raw_lines_per_second), (RawLines::All, 50));
        let env = |k: &str| match k {
            "CORRAL_REDIS_RAW_LINES" => Some("NONE".to_string()),
            "CORRAL_REDIS_TLS_CA" => Some("/env/ca.pem".to_string()),
            _ => None,
        };
        let c = none.config(&f, env).unwrap();
        assert_eq!(
            (c.raw_lines, c.tls_ca.as_deref()),
            (RawLines::None, Some("/env/ca.pem"))
        );
        let d = none.config(&RedisFile::default(), |_| None).unwrap();
        assert_eq!(
            (d.raw_lines, d.raw_lines_per_second, d.tls_ca),
            (RawLines::Important, 1000, None)
        );

        // Wrong values are errors that name the key; a CA without TLS, and #insecure, are refused.
        let (_d, p) = write("c.toml", "raw_lines = \"some\"\n");
        let e = read_file(&p).unwrap_err().to_string();
        assert!(e.contains("`raw_lines`") && e.contains("important"), "{e}");
        let e = none
            .config(&RedisFile::default(), |k| {
                (k == "CORRAL_REDIS_RAW_LINES").then(|| "x".into())
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("CORRAL_REDIS_RAW_LINES"), "{e}");
        let plain_with_ca = RedisFile {
            redis_tls_ca: Some("/etc/ca.pem".into()),
            ..Default::default()
        };
        let e = none
            .config(&plain_with_ca, |_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rediss://"), "{e}");
        let insecure = RedisFile {
            redis_url: Some("rediss://h:6380/#insecure".into()),
            ..Default::default()
        };
        let e = none.config(&insecure, |_| None).unwrap_err().to_string();
        assert!(e.contains("insecure"), "{e}");
    }
}
