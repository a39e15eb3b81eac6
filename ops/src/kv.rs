//! `concord kv`: single operations against a router, printed for people
//! (text, or hex when not printable) or as JSON with `--json`.

use std::time::Duration;

use clap::{Args, Subcommand};
use concord_proto::routerpb::{
    CasRequest, DeleteRangeRequest, DeleteRequest, GetRequest, PutRequest, ScanRequest,
};
use serde_json::{json, Map, Value};

use crate::bytes_text::{json_fields, readable, InputFormat};
use crate::error::{OpsError, Result};
use crate::router_conn::{call_error, connect_lazy};

/// Default router address of `concord kv` and `concord bench`.
pub const DEFAULT_ROUTER: &str = "127.0.0.1:20170";

/// Options shared by every `concord kv` command.
#[derive(Debug, Args)]
pub struct KvArgs {
    /// Router address (HOST:PORT).
    #[arg(long, global = true, env = "CONCORD_ROUTER", default_value = DEFAULT_ROUTER)]
    pub router: String,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Keys and values on the command line are hex (e.g. 0a0b or 0x0a0b).
    #[arg(long, global = true)]
    pub hex: bool,
    /// Seconds before a request is abandoned.
    #[arg(long, global = true, default_value_t = 20)]
    pub timeout_secs: u64,
    /// The operation.
    #[command(subcommand)]
    pub command: KvCommand,
}

/// One raw KV operation.
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Read a key.
    Get {
        /// The key.
        key: String,
    },
    /// Write a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Seconds until the value expires (0: never).
        #[arg(long, default_value_t = 0)]
        ttl: u64,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
    },
    /// Delete every key in [START, END).
    DeleteRange {
        /// First key deleted.
        start: String,
        /// First key kept (empty: no upper bound).
        end: String,
    },
    /// List the pairs of [START, END) in key order.
    Scan {
        /// First key (default: the beginning).
        #[arg(default_value = "")]
        start: String,
        /// End key, exclusive (default: no upper bound).
        #[arg(default_value = "")]
        end: String,
        /// At most this many pairs (0: no limit).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// From the highest key down.
        #[arg(long)]
        reverse: bool,
        /// Keys only.
        #[arg(long)]
        keys_only: bool,
    },
    /// Write NEW only if the current value is --expect (or the key is
    /// absent, with --expect-absent). Exits 0 either way; see the output.
    Cas {
        /// The key.
        key: String,
        /// The value to write.
        new: String,
        /// The value the key must hold.
        #[arg(
            long,
            conflicts_with = "expect_absent",
            required_unless_present = "expect_absent"
        )]
        expect: Option<String>,
        /// The key must not exist.
        #[arg(long)]
        expect_absent: bool,
    },
}

/// Runs one `concord kv` command, printing its result on stdout.
pub async fn run(args: KvArgs) -> Result<()> {
    let out = execute(&args).await?;
    println!("{out}");
    Ok(())
}

/// Runs one `concord kv` command and returns what it prints.
pub async fn execute(args: &KvArgs) -> Result<String> {
    let fmt = if args.hex {
        InputFormat::Hex
    } else {
        InputFormat::Text
    };
    let addr = args.router.as_str();
    let mut client = connect_lazy(addr, Duration::from_secs(args.timeout_secs.max(1)))?;
    let nonempty = |what: &str, arg: &str| -> Result<Vec<u8>> {
        let bytes = fmt.parse(what, arg)?;
        if bytes.is_empty() {
            return Err(OpsError::InvalidInput(format!(
                "the {what} must not be empty"
            )));
        }
        Ok(bytes)
    };
    match &args.command {
        KvCommand::Get { key } => {
            let key = nonempty("key", key)?;
            let resp = client
                .get(GetRequest { key: key.clone() })
                .await
                .map_err(|s| call_error("get", addr, &s))?
                .into_inner();
            let value = (!resp.not_found).then_some(resp.value);
            Ok(if args.json {
                let mut m = Map::new();
                json_fields("key", &key, &mut m);
                m.insert("found".into(), json!(value.is_some()));
                if let Some(v) = &value {
                    json_fields("value", v, &mut m);
                }
                Value::Object(m).to_string()
            } else {
                value.map_or_else(|| "(not found)".to_string(), |v| readable(&v))
            })
        }
        KvCommand::Put { key, value, ttl } => {
            let key = nonempty("key", key)?;
            let value = fmt.parse("value", value)?;
            client
                .put(PutRequest {
                    key: key.clone(),
                    value,
                    ttl: *ttl,
                })
                .await
                .map_err(|s| call_error("put", addr, &s))?;
            Ok(done(args.json, "put", &key))
        }
        KvCommand::Delete { key } => {
            let key = nonempty("key", key)?;
            client
                .delete(DeleteRequest { key: key.clone() })
                .await
                .map_err(|s| call_error("delete", addr, &s))?;
            Ok(done(args.json, "delete", &key))
        }
        KvCommand::DeleteRange { start, end } => {
            let start = fmt.parse("start key", start)?;
            let end = fmt.parse("end key", end)?;
            check_range(&start, &end)?;
            client
                .delete_range(DeleteRangeRequest {
                    start_key: start.clone(),
                    end_key: end,
                })
                .await
                .map_err(|s| call_error("delete_range", addr, &s))?;
            Ok(done(args.json, "delete_range", &start))
        }
        KvCommand::Scan {
            start,
            end,
            limit,
            reverse,
            keys_only,
        } => {
            let start = fmt.parse("start key", start)?;
            let end = fmt.parse("end key", end)?;
            check_range(&start, &end)?;
            let kvs = client
                .scan(ScanRequest {
                    start_key: start,
                    end_key: end,
                    limit: *limit,
                    reverse: *reverse,
                    key_only: *keys_only,
                })
                .await
                .map_err(|s| call_error("scan", addr, &s))?
                .into_inner()
                .kvs;
            Ok(if args.json {
                let pairs: Vec<Value> = kvs
                    .iter()
                    .map(|kv| {
                        let mut m = Map::new();
                        json_fields("key", &kv.key, &mut m);
                        if !keys_only {
                            json_fields("value", &kv.value, &mut m);
                        }
                        Value::Object(m)
                    })
                    .collect();
                json!({ "count": pairs.len(), "pairs": pairs }).to_string()
            } else {
                let mut lines: Vec<String> = kvs
                    .iter()
                    .map(|kv| {
                        if *keys_only {
                            readable(&kv.key)
                        } else {
                            format!("{}\t{}", readable(&kv.key), readable(&kv.value))
                        }
                    })
                    .collect();
                lines.push(format!("({} pairs)", kvs.len()));
                lines.join("\n")
            })
        }
        KvCommand::Cas {
            key,
            new,
            expect,
            expect_absent,
        } => {
            let key = nonempty("key", key)?;
            let value = fmt.parse("value", new)?;
            let previous = match (expect, expect_absent) {
                (Some(p), false) => Some(fmt.parse("expected value", p)?),
                (None, true) => None,
                _ => {
                    return Err(OpsError::InvalidInput(
                        "give exactly one of --expect VALUE and --expect-absent".into(),
                    ))
                }
            };
            let resp = client
                .compare_and_swap(CasRequest {
                    key: key.clone(),
                    value,
                    previous_not_exist: previous.is_none(),
                    previous_value: previous.unwrap_or_default(),
                    ttl: 0,
                })
                .await
                .map_err(|s| call_error("cas", addr, &s))?
                .into_inner();
            let found = (!resp.previous_not_exist).then_some(resp.previous_value);
            Ok(if args.json {
                let mut m = Map::new();
                json_fields("key", &key, &mut m);
                m.insert("swapped".into(), json!(resp.succeed));
                m.insert("previous_found".into(), json!(found.is_some()));
                if let Some(f) = &found {
                    json_fields("previous", f, &mut m);
                }
                Value::Object(m).to_string()
            } else {
                let was = found.map_or_else(|| "(absent)".to_string(), |f| readable(&f));
                if resp.succeed {
                    format!("swapped (was {was})")
                } else {
                    format!("not swapped: current value is {was}")
                }
            })
        }
    }
}

fn check_range(start: &[u8], end: &[u8]) -> Result<()> {
    if !end.is_empty() && start > end {
        return Err(OpsError::InvalidInput(
            "the start key sorts after the end key".into(),
        ));
    }
    Ok(())
}

fn done(json: bool, op: &str, key: &[u8]) -> String {
    if json {
        let mut m = Map::new();
        m.insert("ok".into(), json!(true));
        m.insert("op".into(), json!(op));
        json_fields("key", key, &mut m);
        Value::Object(m).to_string()
    } else {
        "OK".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_must_be_ordered() {
        assert!(check_range(b"a", b"b").is_ok());
        assert!(check_range(b"b", b"").is_ok());
        assert!(check_range(b"b", b"a").is_err());
    }

    #[test]
    fn done_is_ok_or_json() {
        assert_eq!(done(false, "put", b"k"), "OK");
        let v: Value = serde_json::from_str(&done(true, "put", b"k")).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["key"], "k");
    }
}
