//! ConcordKV operations: the `concord` command line (playground, kv, bench),
//! with example configs, container images and dashboards beside it in `ops/`.
