//! Router configuration: a TOML file (`--config`), command-line flags that
//! override it, and documented defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::retry::BackoffConfig;
use crate::routing::RoutingConfig;
use concord_common::limits::{Limits, DEFAULT_MAX_KEY_SIZE, DEFAULT_MAX_VALUE_SIZE};

/// Default client-facing gRPC address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:20170";
/// Default HTTP status address (`/metrics`, `/status`).
pub const DEFAULT_STATUS_ADDR: &str = "127.0.0.1:20171";
/// Default PD address.
pub const DEFAULT_PD: &str = "127.0.0.1:2379";

/// The effective router configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RouterConfig {
    /// Client-facing gRPC listen address (port 0: any free port).
    pub addr: String,
    /// HTTP status listen address (port 0: any free port).
    pub status_addr: String,
    /// PD members to ask for regions and stores.
    pub pd: Vec<String>,
    /// Total time one request may spend on retries before it fails.
    pub max_retry_time_ms: u64,
    /// First backoff delay between retries.
    pub backoff_base_ms: u64,
    /// Largest backoff delay between retries.
    pub backoff_max_ms: u64,
    /// Longest wait for one store RPC.
    pub rpc_timeout_ms: u64,
    /// Longest wait to open a connection to a store.
    pub connect_timeout_ms: u64,
    /// Most region sub-requests of one multi-key request in flight.
    pub max_parallel: usize,
    /// Most requests served at once per client connection; more wait
    /// (backpressure) instead of queueing without bound.
    pub max_concurrent_requests_per_connection: usize,
    /// Largest key accepted, in bytes.
    pub max_key_size: usize,
    /// Largest value accepted, in bytes.
    pub max_value_size: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        let routing = RoutingConfig::default();
        RouterConfig {
            addr: DEFAULT_ADDR.into(),
            status_addr: DEFAULT_STATUS_ADDR.into(),
            pd: vec![DEFAULT_PD.into()],
            max_retry_time_ms: routing.backoff.total.as_millis() as u64,
            backoff_base_ms: routing.backoff.base.as_millis() as u64,
            backoff_max_ms: routing.backoff.max.as_millis() as u64,
            rpc_timeout_ms: routing.rpc_timeout.as_millis() as u64,
            connect_timeout_ms: routing.connect_timeout.as_millis() as u64,
            max_parallel: routing.max_parallel,
            max_concurrent_requests_per_connection: 1024,
            max_key_size: DEFAULT_MAX_KEY_SIZE,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
        }
    }
}

/// Command-line flags of `concord-router`. Every flag overrides the same
/// key of the `--config` file.
#[derive(Debug, Default, clap::Parser)]
#[command(name = "concord-router", version, about = "ConcordKV stateless router")]
pub struct CliArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Client-facing gRPC listen address [default: 127.0.0.1:20170].
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
    /// HTTP status listen address (/metrics, /status) [default: 127.0.0.1:20171].
    #[arg(long, value_name = "HOST:PORT")]
    pub status_addr: Option<String>,
    /// PD members, comma-separated [default: 127.0.0.1:2379].
    #[arg(long, value_name = "ADDR[,ADDR]", value_delimiter = ',')]
    pub pd: Option<Vec<String>>,
    /// Total retry time per request, in milliseconds [default: 20000].
    #[arg(long, value_name = "MS")]
    pub max_retry_time_ms: Option<u64>,
}

impl RouterConfig {
    /// The configuration from `args.config` (if any) with the flags
    /// applied over it.
    pub fn load(args: &CliArgs) -> Result<RouterConfig> {
        let mut config = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
                toml::from_str(&text)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            }
            None => RouterConfig::default(),
        };
        if let Some(addr) = &args.addr {
            config.addr = addr.clone();
        }
        if let Some(addr) = &args.status_addr {
            config.status_addr = addr.clone();
        }
        if let Some(pd) = &args.pd {
            config.pd = pd.clone();
        }
        if let Some(ms) = args.max_retry_time_ms {
            config.max_retry_time_ms = ms;
        }
        config.validate()?;
        Ok(config)
    }

    /// Rejects values the router cannot run with.
    pub fn validate(&self) -> Result<()> {
        if self.pd.is_empty() || self.pd.iter().any(|a| a.trim().is_empty()) {
            return Err(Error::Config(format!(
                "pd must list at least one address, got {:?}",
                self.pd
            )));
        }
        if self.max_retry_time_ms == 0 {
            return Err(Error::Config("max-retry-time-ms must be above 0".into()));
        }
        if self.backoff_base_ms == 0 || self.backoff_max_ms < self.backoff_base_ms {
            return Err(Error::Config(
                "backoff-base-ms must be above 0 and at most backoff-max-ms".into(),
            ));
        }
        if self.max_parallel == 0 || self.max_concurrent_requests_per_connection == 0 {
            return Err(Error::Config(
                "max-parallel and max-concurrent-requests-per-connection must be above 0".into(),
            ));
        }
        Ok(())
    }

    /// The routing-library settings this configuration stands for.
    pub fn routing(&self) -> RoutingConfig {
        RoutingConfig {
            backoff: BackoffConfig {
                base: Duration::from_millis(self.backoff_base_ms),
                max: Duration::from_millis(self.backoff_max_ms),
                total: Duration::from_millis(self.max_retry_time_ms),
            },
            rpc_timeout: Duration::from_millis(self.rpc_timeout_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            max_parallel: self.max_parallel,
            limits: Limits {
                max_key_size: self.max_key_size,
                max_value_size: self.max_value_size,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("router.toml");
        std::fs::write(
            &path,
            "addr = \"127.0.0.1:7000\"\npd = [\"10.0.0.1:2379\"]\nmax-retry-time-ms = 5000\n",
        )
        .expect("write config");
        let args = CliArgs::parse_from([
            "concord-router",
            "--config",
            path.to_str().expect("utf-8 path"),
            "--pd",
            "127.0.0.1:1,127.0.0.1:2",
        ]);
        let config = RouterConfig::load(&args).expect("valid config");
        assert_eq!(config.addr, "127.0.0.1:7000");
        assert_eq!(config.status_addr, DEFAULT_STATUS_ADDR);
        assert_eq!(config.pd, vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(config.routing().backoff.total, Duration::from_secs(5));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("router.toml");
        std::fs::write(&path, "adr = \"x\"\n").expect("write config");
        let args =
            CliArgs::parse_from(["concord-router", "--config", path.to_str().expect("utf-8")]);
        assert!(matches!(RouterConfig::load(&args), Err(Error::Config(_))));
        let config = RouterConfig {
            pd: Vec::new(),
            ..RouterConfig::default()
        };
        assert!(config.validate().is_err());
    }
}
