//! `pd-ctl`: inspect and steer a ConcordKV PD over its HTTP API. Prints JSON
//! by default, a table with `--table`; errors go to stderr with a non-zero
//! exit code.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use concord_pd::http_api::hex;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(
    name = "pd-ctl",
    version,
    about = "Control a ConcordKV placement driver"
)]
struct Cli {
    /// PD HTTP address; several (comma-separated or repeated) for a
    /// replicated PD: requests go to the leader, found through them
    #[arg(
        short = 'u',
        long = "pd",
        env = "PD_ADDR",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2380"
    )]
    pd: Vec<String>,
    /// Print tables for people instead of JSON
    #[arg(long, global = true)]
    table: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Cluster id, replica count and bootstrap state
    Cluster,
    /// Health of the PD members
    Health,
    /// PD members and the leader
    Member,
    /// A fresh timestamp
    Tso,
    /// Stores: list, show one, delete, label, limit
    Store(StoreArgs),
    /// Regions: list, show one, by key, hottest
    Region(RegionArgs),
    /// Operators: show, add, remove
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Schedulers: show, add, remove
    #[command(subcommand)]
    Scheduler(SchedulerCmd),
    /// Configuration: show, set
    #[command(subcommand)]
    Config(ConfigCmd),
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct StoreArgs {
    #[command(subcommand)]
    command: Option<StoreCmd>,
    /// Show only this store
    id: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum StoreCmd {
    /// Remove a store: Offline until its replicas moved, then Tombstone
    Delete { id: u64 },
    /// Set labels, e.g. `store label 1 zone=z1 rack=r1`
    Label {
        id: u64,
        #[arg(required = true, value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Show per-store operator limits, or set one: `store limit 1 8`
    Limit { id: Option<u64>, limit: Option<u64> },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct RegionArgs {
    #[command(subcommand)]
    command: Option<RegionCmd>,
    /// Show only this region
    id: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum RegionCmd {
    /// The region holding KEY
    Key {
        key: String,
        /// KEY is hex-encoded
        #[arg(long)]
        hex: bool,
    },
    /// The N regions with the most bytes written
    Topwrite {
        #[arg(default_value_t = 10)]
        n: usize,
    },
    /// The N regions with the most bytes read
    Topread {
        #[arg(default_value_t = 10)]
        n: usize,
    },
}

#[derive(Subcommand, Debug)]
enum OperatorCmd {
    /// Running operators (of one region if given)
    Show { region_id: Option<u64> },
    /// Start an operator
    #[command(subcommand)]
    Add(OperatorAdd),
    /// Cancel a region's operator
    Remove { region_id: u64 },
}

#[derive(Subcommand, Debug)]
enum OperatorAdd {
    /// Move the region's leadership to its peer on STORE
    TransferLeader { region_id: u64, store_id: u64 },
    /// Place the region's replicas on exactly these stores
    TransferRegion {
        region_id: u64,
        #[arg(required = true)]
        store_ids: Vec<u64>,
    },
    /// Add a replica on STORE
    AddPeer { region_id: u64, store_id: u64 },
    /// Remove the replica on STORE
    RemovePeer { region_id: u64, store_id: u64 },
    /// Split the region (at hex KEYS, or in the middle)
    SplitRegion { region_id: u64, keys: Vec<String> },
}

#[derive(Subcommand, Debug)]
enum SchedulerCmd {
    /// Running schedulers
    Show,
    /// Start balance-region, balance-leader, hot-region or evict-leader STORE
    Add { name: String, store_id: Option<u64> },
    /// Stop a scheduler by the name `scheduler show` prints
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// The effective configuration
    Show,
    /// Change a scheduling setting, e.g. `config set region-schedule-limit 8`
    Set { key: String, value: String },
}

/// What went wrong, printed to stderr.
#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error("cannot reach PD at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Server(String),
    #[error("{0}")]
    Usage(String),
}

struct Pd {
    bases: Vec<String>,
    http: reqwest::Client,
}

/// What one PD member answered.
enum Answer {
    Done(Result<Value, CtlError>),
    /// The member does not lead; it names the leader's HTTP URL if known.
    NotLeader {
        leader: Option<String>,
        error: CtlError,
    },
}

#[derive(Clone)]
enum Method {
    Get,
    Post(Value),
    Delete,
}

impl Pd {
    /// Sends the request to the PD leader: tries the given members in
    /// turn and follows a member's leader hint.
    async fn call(&self, method: Method, path: &str) -> Result<Value, CtlError> {
        let mut candidates: std::collections::VecDeque<String> =
            self.bases.iter().cloned().collect();
        let mut tried: Vec<String> = Vec::new();
        let mut last = None;
        while let Some(base) = candidates.pop_front() {
            if tried.contains(&base) {
                continue;
            }
            tried.push(base.clone());
            match self.call_one(&base, method.clone(), path).await {
                Answer::Done(Err(e @ CtlError::Unreachable { .. })) => last = Some(e),
                Answer::Done(result) => return result,
                Answer::NotLeader { leader, error } => {
                    if let Some(leader) = leader {
                        candidates.push_front(leader);
                    }
                    last = Some(error);
                }
            }
        }
        Err(last.unwrap_or_else(|| CtlError::Usage("no PD address given".into())))
    }

    async fn call_one(&self, base: &str, method: Method, path: &str) -> Answer {
        let url = format!("{base}/pd/api/v1{path}");
        let request = match method {
            Method::Get => self.http.get(&url),
            Method::Post(body) => self.http.post(&url).json(&body),
            Method::Delete => self.http.delete(&url),
        };
        let unreachable = |e: reqwest::Error| CtlError::Unreachable {
            url: base.to_string(),
            reason: e.to_string(),
        };
        let resp = match request.send().await {
            Ok(resp) => resp,
            Err(e) => return Answer::Done(Err(unreachable(e))),
        };
        let status = resp.status();
        let text = match resp.text().await {
            Ok(text) => text,
            Err(e) => return Answer::Done(Err(unreachable(e))),
        };
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Answer::Done(Ok(value));
        }
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| value.to_string());
        let error = CtlError::Server(format!("{message} (HTTP {})", status.as_u16()));
        match value.get("leader") {
            Some(leader) if status.as_u16() == 503 => Answer::NotLeader {
                leader: leader
                    .get("http_url")
                    .and_then(Value::as_str)
                    .filter(|u| !u.is_empty())
                    .map(|u| u.trim_end_matches('/').to_string()),
                error,
            },
            _ => Answer::Done(Err(error)),
        }
    }
}

fn parse_label(text: &str) -> Result<(String, String), CtlError> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(CtlError::Usage(format!("label {text:?} is not KEY=VALUE"))),
    }
}

async fn run(pd: &Pd, command: Command) -> Result<Value, CtlError> {
    use Method::{Delete, Get, Post};
    match command {
        Command::Cluster => pd.call(Get, "/cluster").await,
        Command::Health => pd.call(Get, "/health").await,
        Command::Member => pd.call(Get, "/members").await,
        Command::Tso => pd.call(Get, "/tso").await,
        Command::Store(args) => match (args.command, args.id) {
            (None, None) => pd.call(Get, "/stores").await,
            (None, Some(id)) => pd.call(Get, &format!("/store/{id}")).await,
            (Some(StoreCmd::Delete { id }), _) => pd.call(Delete, &format!("/store/{id}")).await,
            (Some(StoreCmd::Label { id, labels }), _) => {
                let mut body = serde_json::Map::new();
                for label in &labels {
                    let (k, v) = parse_label(label)?;
                    body.insert(k, Value::String(v));
                }
                pd.call(Post(Value::Object(body)), &format!("/store/{id}/label"))
                    .await
            }
            (Some(StoreCmd::Limit { id: None, .. }), _) => pd.call(Get, "/stores/limit").await,
            (
                Some(StoreCmd::Limit {
                    id: Some(id),
                    limit: Some(limit),
                }),
                _,
            ) => {
                pd.call(
                    Post(json!({ "limit": limit })),
                    &format!("/store/{id}/limit"),
                )
                .await
            }
            (
                Some(StoreCmd::Limit {
                    id: Some(_),
                    limit: None,
                }),
                _,
            ) => Err(CtlError::Usage("usage: store limit [ID LIMIT]".into())),
        },
        Command::Region(args) => match (args.command, args.id) {
            (None, None) => pd.call(Get, "/regions").await,
            (None, Some(id)) => pd.call(Get, &format!("/region/id/{id}")).await,
            (Some(RegionCmd::Key { key, hex: is_hex }), _) => {
                let encoded = if is_hex { key } else { hex(key.as_bytes()) };
                pd.call(Get, &format!("/region/key/{encoded}?format=hex"))
                    .await
            }
            (Some(RegionCmd::Topwrite { n }), _) => {
                pd.call(Get, &format!("/regions/writeflow?limit={n}")).await
            }
            (Some(RegionCmd::Topread { n }), _) => {
                pd.call(Get, &format!("/regions/readflow?limit={n}")).await
            }
        },
        Command::Operator(OperatorCmd::Show { region_id: None }) => {
            pd.call(Get, "/operators").await
        }
        Command::Operator(OperatorCmd::Show {
            region_id: Some(id),
        }) => pd.call(Get, &format!("/operators/{id}")).await,
        Command::Operator(OperatorCmd::Remove { region_id }) => {
            pd.call(Delete, &format!("/operators/{region_id}")).await
        }
        Command::Operator(OperatorCmd::Add(add)) => {
            let body = match add {
                OperatorAdd::TransferLeader {
                    region_id,
                    store_id,
                } => json!({
                    "name": "transfer-leader", "region_id": region_id, "to_store_id": store_id,
                }),
                OperatorAdd::TransferRegion {
                    region_id,
                    store_ids,
                } => json!({
                    "name": "transfer-region", "region_id": region_id, "to_store_ids": store_ids,
                }),
                OperatorAdd::AddPeer {
                    region_id,
                    store_id,
                } => json!({
                    "name": "add-peer", "region_id": region_id, "store_id": store_id,
                }),
                OperatorAdd::RemovePeer {
                    region_id,
                    store_id,
                } => json!({
                    "name": "remove-peer", "region_id": region_id, "store_id": store_id,
                }),
                OperatorAdd::SplitRegion { region_id, keys } => json!({
                    "name": "split-region", "region_id": region_id, "keys": keys,
                }),
            };
            pd.call(Post(body), "/operators").await
        }
        Command::Scheduler(SchedulerCmd::Show) => pd.call(Get, "/schedulers").await,
        Command::Scheduler(SchedulerCmd::Add { name, store_id }) => {
            let mut body = json!({ "name": name });
            if let Some(id) = store_id {
                body["store_id"] = json!(id);
            } else if name == "evict-leader" {
                return Err(CtlError::Usage(
                    "usage: scheduler add evict-leader STORE_ID".into(),
                ));
            }
            pd.call(Post(body), "/schedulers").await
        }
        Command::Scheduler(SchedulerCmd::Remove { name }) => {
            pd.call(Delete, &format!("/schedulers/{name}")).await
        }
        Command::Config(ConfigCmd::Show) => pd.call(Get, "/config").await,
        Command::Config(ConfigCmd::Set { key, value }) => {
            pd.call(Post(json!({ "key": key, "value": value })), "/config")
                .await
        }
    }
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(|v| !v.is_object() && !v.is_array()) => {
            items.iter().map(cell).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}

/// Renders rows of objects as an aligned table over the first row's keys.
fn rows_table(rows: &[Value]) -> String {
    let Some(Value::Object(first)) = rows.first() else {
        return rows.iter().map(cell).collect::<Vec<_>>().join("\n");
    };
    let columns: Vec<&String> = first.keys().collect();
    let mut grid: Vec<Vec<String>> = vec![columns.iter().map(|c| c.to_uppercase()).collect()];
    for row in rows {
        grid.push(
            columns
                .iter()
                .map(|c| row.get(c.as_str()).map_or("-".into(), cell))
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| grid.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    grid.iter()
        .map(|row| {
            row.iter()
                .zip(&widths)
                .map(|(text, width)| format!("{text:<width$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A table for people: lists become rows, objects become KEY VALUE lines.
fn table(value: &Value) -> String {
    match value {
        Value::Array(rows) => rows_table(rows),
        Value::Object(map) => {
            if let Some(Value::Array(rows)) = ["stores", "regions", "operators", "members"]
                .iter()
                .find_map(|k| map.get(*k))
            {
                return rows_table(rows);
            }
            let width = map.keys().map(|k| k.len()).max().unwrap_or(0);
            map.iter()
                .map(|(k, v)| format!("{k:<width$}  {}", cell(v)))
                .collect::<Vec<_>>()
                .join("\n")
        }
        other => cell(other),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let bases = cli
        .pd
        .iter()
        .map(|pd| pd.trim().trim_end_matches('/'))
        .filter(|pd| !pd.is_empty())
        .map(|pd| {
            if pd.starts_with("http://") || pd.starts_with("https://") {
                pd.to_string()
            } else {
                format!("http://{pd}")
            }
        })
        .collect();
    let http = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            eprintln!("pd-ctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pd = Pd { bases, http };
    match run(&pd, cli.command).await {
        Ok(value) => {
            if cli.table {
                println!("{}", table(&value));
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string())
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pd-ctl: {e}");
            match e {
                CtlError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_rows_and_flatten_lists() {
        let value = json!({
            "count": 2,
            "stores": [
                {"id": 1, "address": "a:1", "labels": ["x", "y"]},
                {"id": 22, "address": "long-address:2", "labels": []},
            ]
        });
        let text = table(&value);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ADDRESS         ID  LABELS"), "{text}");
        assert!(lines[1].contains("x,y"));
        let kv = table(&json!({"id": 7, "bootstrapped": true}));
        assert!(kv.contains("bootstrapped  true"), "{kv}");
    }

    #[test]
    fn labels_must_be_key_value() {
        assert_eq!(
            parse_label("zone=z1").unwrap(),
            ("zone".to_string(), "z1".to_string())
        );
        assert!(parse_label("zone").is_err());
        assert!(parse_label("=z1").is_err());
    }
}
