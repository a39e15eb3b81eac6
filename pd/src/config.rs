//! PD configuration: a TOML file (`--config`), command-line flags that
//! override it, and documented defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{PdServerError, Result};
use crate::replication::RaftSettings;

/// Default gRPC listen address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:2379";
/// Default HTTP (JSON API, /metrics, /status) listen address.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:2380";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./pd-data";
/// Default member-to-member (raft) listen address.
pub const DEFAULT_PEER_ADDR: &str = "127.0.0.1:2381";
/// Default raft election timeout of a replicated PD, in ms.
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 1000;

/// The effective PD configuration.
///
/// The scheduling values (`max-replicas`, `max-store-down-time-secs`,
/// `location-labels`, the schedule limits) seed the cluster's scheduling
/// configuration on first start; after a change through the HTTP API
/// (`pd-ctl config set`) the persisted values win over the file and flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct PdConfig {
    /// Name of this PD member (its key in `initial-cluster`).
    pub name: String,
    /// gRPC listen address (port 0: any free port).
    pub addr: String,
    /// HTTP listen address (port 0: any free port).
    pub http_addr: String,
    /// gRPC address other members, stores and routers are told to use
    /// (empty: the bound `addr`). Set it when listening on 0.0.0.0, e.g.
    /// `pd1:2379` in containers, whose IP can change.
    pub advertise_addr: String,
    /// HTTP address members and pd-ctl are told to use (empty: the bound
    /// `http-addr`).
    pub advertise_http_addr: String,
    /// Directory of the metadata RocksDB.
    pub data_dir: PathBuf,
    /// Number of replicas of every region.
    pub max_replicas: u32,
    /// A store silent for longer than this is Down and its replicas are
    /// recreated elsewhere.
    pub max_store_down_time_secs: u64,
    /// Milliseconds of timestamps reserved by one persisted TSO window.
    pub tso_save_window_ms: u64,
    /// Ids reserved by one persisted id-allocator write.
    pub id_batch: u64,
    /// Label keys, outermost first, over which replicas are spread
    /// (e.g. `["zone", "rack", "host"]`).
    pub location_labels: Vec<String>,
    /// Most in-flight replica-moving operators touching one store.
    pub region_schedule_limit: usize,
    /// Most in-flight leader transfers touching one store.
    pub leader_schedule_limit: usize,
    /// Milliseconds between scheduling rounds (0: no background scheduling).
    pub schedule_interval_ms: u64,
    /// Member-to-member (raft) listen address; used only when
    /// `initial-cluster` names several members.
    pub peer_addr: String,
    /// The PD members as `name=peer-addr,...` (this member's `name`
    /// included); empty: a single-member PD.
    pub initial_cluster: String,
    /// Raft election timeout in ms: a new PD leader is elected within
    /// about twice this after the old one dies.
    pub election_timeout_ms: u64,
    /// Applied entries a member keeps in its raft log; past this it drops
    /// the older half. A member that falls further behind is sent a
    /// snapshot of the metadata.
    pub raft_log_gc_threshold: u64,
}

impl Default for PdConfig {
    fn default() -> Self {
        PdConfig {
            name: "pd".into(),
            addr: DEFAULT_ADDR.into(),
            http_addr: DEFAULT_HTTP_ADDR.into(),
            advertise_addr: String::new(),
            advertise_http_addr: String::new(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            max_replicas: 3,
            max_store_down_time_secs: 30 * 60,
            tso_save_window_ms: 3000,
            id_batch: 1000,
            location_labels: Vec::new(),
            region_schedule_limit: 4,
            leader_schedule_limit: 4,
            schedule_interval_ms: 1000,
            peer_addr: DEFAULT_PEER_ADDR.into(),
            initial_cluster: String::new(),
            election_timeout_ms: DEFAULT_ELECTION_TIMEOUT_MS,
            raft_log_gc_threshold: 10_000,
        }
    }
}

/// Command-line flags of `concord-pd`. Every flag overrides the same key of
/// the `--config` file.
#[derive(Debug, Default, clap::Parser)]
#[command(name = "concord-pd", version, about = "ConcordKV placement driver")]
pub struct CliArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Name of this PD member [default: pd]
    #[arg(long)]
    pub name: Option<String>,
    /// gRPC listen address [default: 127.0.0.1:2379]
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
    /// HTTP API, /metrics and /status listen address [default: 127.0.0.1:2380]
    #[arg(long, value_name = "HOST:PORT")]
    pub http_addr: Option<String>,
    /// gRPC address to advertise to members, stores and routers
    /// [default: the bound --addr]
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_addr: Option<String>,
    /// HTTP address to advertise to members and pd-ctl [default: the bound
    /// --http-addr]
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_http_addr: Option<String>,
    /// Metadata directory [default: ./pd-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Replicas per region [default: 3]
    #[arg(long)]
    pub max_replicas: Option<u32>,
    /// Seconds without heartbeat before a store is Down and its replicas are
    /// replaced [default: 1800]
    #[arg(long, value_name = "SECS")]
    pub max_store_down_time_secs: Option<u64>,
    /// Comma-separated location label keys, outermost first, e.g.
    /// zone,rack,host [default: none]
    #[arg(long, value_name = "KEYS", value_delimiter = ',')]
    pub location_labels: Option<Vec<String>>,
    /// Member-to-member (raft) listen address of a replicated PD
    /// [default: 127.0.0.1:2381]
    #[arg(long, value_name = "HOST:PORT")]
    pub peer_addr: Option<String>,
    /// The PD members, e.g. pd1=127.0.0.1:2381,pd2=...,pd3=... (peer
    /// addresses; --name must be one of them) [default: none, a
    /// single-member PD]
    #[arg(long, value_name = "NAME=ADDR,...")]
    pub initial_cluster: Option<String>,
    /// Raft election timeout of a replicated PD in ms [default: 1000]
    #[arg(long, value_name = "MS")]
    pub election_timeout_ms: Option<u64>,
}

impl PdConfig {
    /// Parses a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PdServerError::Config(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| PdServerError::Config(format!("{}: {e}", path.display())))
    }

    /// The configuration from the file named by `--config` (or defaults),
    /// overridden by the other flags, then validated.
    pub fn from_args(args: CliArgs) -> Result<Self> {
        let mut config = match &args.config {
            Some(path) => PdConfig::from_file(path)?,
            None => PdConfig::default(),
        };
        if let Some(v) = args.name {
            config.name = v;
        }
        if let Some(v) = args.addr {
            config.addr = v;
        }
        if let Some(v) = args.http_addr {
            config.http_addr = v;
        }
        if let Some(v) = args.advertise_addr {
            config.advertise_addr = v;
        }
        if let Some(v) = args.advertise_http_addr {
            config.advertise_http_addr = v;
        }
        if let Some(v) = args.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = args.max_replicas {
            config.max_replicas = v;
        }
        if let Some(v) = args.max_store_down_time_secs {
            config.max_store_down_time_secs = v;
        }
        if let Some(v) = args.location_labels {
            config.location_labels = v;
        }
        if let Some(v) = args.peer_addr {
            config.peer_addr = v;
        }
        if let Some(v) = args.initial_cluster {
            config.initial_cluster = v;
        }
        if let Some(v) = args.election_timeout_ms {
            config.election_timeout_ms = v;
        }
        config.validate()?;
        Ok(config)
    }

    /// How this member's raft node runs.
    pub fn raft_settings(&self) -> RaftSettings {
        RaftSettings {
            election_timeout: Duration::from_millis(self.election_timeout_ms),
            log_gc_threshold: self.raft_log_gc_threshold,
        }
    }

    /// Rejects values PD cannot run with.
    pub fn validate(&self) -> Result<()> {
        if self.max_replicas == 0 {
            return Err(PdServerError::Config("max-replicas must be >= 1".into()));
        }
        if self.tso_save_window_ms < 2 {
            return Err(PdServerError::Config(
                "tso-save-window-ms must be >= 2".into(),
            ));
        }
        if self.id_batch == 0 {
            return Err(PdServerError::Config("id-batch must be >= 1".into()));
        }
        if self.raft_log_gc_threshold < 2 {
            return Err(PdServerError::Config(
                "raft-log-gc-threshold must be >= 2".into(),
            ));
        }
        if self.election_timeout_ms < 10 {
            return Err(PdServerError::Config(
                "election-timeout-ms must be >= 10".into(),
            ));
        }
        if !self.initial_cluster.trim().is_empty() {
            let members = crate::members::parse_initial_cluster(&self.initial_cluster)?;
            if !members.iter().any(|m| m.name == self.name) {
                return Err(PdServerError::Config(format!(
                    "name {:?} is not listed in initial-cluster",
                    self.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pd.toml");
        std::fs::write(
            &path,
            "addr = \"127.0.0.1:5000\"\nhttp-addr = \"127.0.0.1:5001\"\nmax-replicas = 5\n",
        )
        .unwrap();
        let args = CliArgs::try_parse_from([
            "concord-pd",
            "--config",
            path.to_str().unwrap(),
            "--addr",
            "127.0.0.1:6000",
            "--advertise-addr",
            "pd1:6000",
        ])
        .unwrap();
        let config = PdConfig::from_args(args).unwrap();
        assert_eq!(config.addr, "127.0.0.1:6000");
        assert_eq!(config.advertise_addr, "pd1:6000");
        assert_eq!(config.advertise_http_addr, "");
        assert_eq!(config.http_addr, "127.0.0.1:5001");
        assert_eq!(config.max_replicas, 5);
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pd.toml");
        std::fs::write(&path, "adress = \"x\"\n").unwrap();
        let err = PdConfig::from_file(&path).unwrap_err();
        assert!(err.to_string().contains("adress"), "{err}");
        let args = CliArgs::try_parse_from(["concord-pd", "--max-replicas", "0"]).unwrap();
        assert!(PdConfig::from_args(args).is_err());
    }

    #[test]
    fn help_shows_defaults() {
        let err = CliArgs::try_parse_from(["concord-pd", "--help"]).unwrap_err();
        let help = err.to_string();
        assert!(help.contains(DEFAULT_ADDR), "{help}");
        assert!(help.contains(DEFAULT_HTTP_ADDR), "{help}");
        assert!(help.contains(DEFAULT_DATA_DIR), "{help}");
    }
}
