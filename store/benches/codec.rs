//! Encoding and decoding on the hot paths, with 256-byte values:
//!
//! - `kvrpcpb`: a `RawPutRequest` (client → store) and a `RawGetResponse`
//!   (store → client), prost.
//! - the raft command: the `RaftCmdRequest` a raw put proposes (prost, as
//!   `Peer::propose` encodes and the apply worker decodes it), and the raft
//!   log `Entry` holding it (protobuf, as `PeerStorage::append` writes it).
//! - store-to-store: a `RaftMessage` carrying an append of 16 such entries,
//!   encoded as `Peer::send_raft` + the gRPC transport do (raft message with
//!   protobuf inside the prost envelope) and decoded the same way back.
//!
//! Run with `cargo bench -p concord-store --bench codec`.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{self, EntryType, MessageType};
use std::hint::black_box;

use concord_proto::kvrpcpb::{Context, RawGetResponse, RawPutRequest};
use concord_proto::metapb;
use concord_proto::raft_cmdpb::{request, PutRequest, RaftCmdRequest, RaftRequestHeader, Request};
use concord_proto::raft_serverpb::RaftMessage;
use concord_store::engine::CF_DEFAULT;
use concord_store::raw_value;

use common::{config, user_key, VALUE_SIZE};

/// Entries in the benchmarked append message.
const APPEND_ENTRIES: u64 = 16;

fn peer(id: u64, store_id: u64) -> metapb::Peer {
    metapb::Peer {
        id,
        store_id,
        role: metapb::PeerRole::Voter as i32,
    }
}

fn epoch() -> Option<metapb::RegionEpoch> {
    Some(metapb::RegionEpoch {
        conf_ver: 3,
        version: 7,
    })
}

fn raw_put_request() -> RawPutRequest {
    RawPutRequest {
        context: Some(Context {
            region_id: 42,
            region_epoch: epoch(),
            peer: Some(peer(43, 1)),
        }),
        key: user_key(123_456),
        value: vec![0xab; VALUE_SIZE],
        ttl: 0,
    }
}

fn raw_get_response() -> RawGetResponse {
    RawGetResponse {
        region_error: None,
        error: String::new(),
        value: vec![0xcd; VALUE_SIZE],
        not_found: false,
    }
}

/// The command a raw put proposes (built as `KvApi::raw_batch_put` does).
fn raft_cmd(n: u64) -> RaftCmdRequest {
    RaftCmdRequest {
        header: Some(RaftRequestHeader {
            region_id: 42,
            peer: Some(peer(43, 1)),
            region_epoch: epoch(),
            proposal_id: 0,
        }),
        requests: vec![Request {
            cmd: Some(request::Cmd::Put(PutRequest {
                cf: CF_DEFAULT.to_string(),
                key: user_key(n),
                value: raw_value::encode(&[0xab; VALUE_SIZE], 0, 0),
            })),
        }],
        admin_request: None,
    }
}

fn log_entry(index: u64) -> eraftpb::Entry {
    let mut e = eraftpb::Entry::default();
    e.set_entry_type(EntryType::EntryNormal);
    e.term = 6;
    e.index = index;
    e.data = raft_cmd(index).encode_to_vec().into();
    e
}

fn append_message() -> RaftMessage {
    let mut m = eraftpb::Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.from = 43;
    m.to = 44;
    m.term = 6;
    m.log_term = 6;
    m.index = 1000;
    m.commit = 1000;
    for i in 0..APPEND_ENTRIES {
        m.mut_entries().push(log_entry(1001 + i));
    }
    RaftMessage {
        region_id: 42,
        from_peer: Some(peer(43, 1)),
        to_peer: Some(peer(44, 2)),
        region_epoch: epoch(),
        start_key: b"a".to_vec(),
        end_key: b"z".to_vec(),
        message: m.write_to_bytes().expect("raft messages encode"),
        is_tombstone: false,
        hibernate: false,
    }
}

fn kvrpc(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/kvrpc");
    group.throughput(Throughput::Elements(1));

    let put = raw_put_request();
    let put_bytes = put.encode_to_vec();
    group.bench_function("raw_put_request/encode", |b| {
        b.iter(|| black_box(&put).encode_to_vec())
    });
    group.bench_function("raw_put_request/decode", |b| {
        b.iter(|| RawPutRequest::decode(black_box(put_bytes.as_slice())).expect("decodes"))
    });

    let get = raw_get_response();
    let get_bytes = get.encode_to_vec();
    group.bench_function("raw_get_response/encode", |b| {
        b.iter(|| black_box(&get).encode_to_vec())
    });
    group.bench_function("raw_get_response/decode", |b| {
        b.iter(|| RawGetResponse::decode(black_box(get_bytes.as_slice())).expect("decodes"))
    });
    group.finish();
}

fn raft_command(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/raft_cmd");
    group.throughput(Throughput::Elements(1));

    let cmd = raft_cmd(7);
    let cmd_bytes = cmd.encode_to_vec();
    group.bench_function("put_cmd/encode", |b| {
        b.iter(|| black_box(&cmd).encode_to_vec())
    });
    group.bench_function("put_cmd/decode", |b| {
        b.iter(|| RaftCmdRequest::decode(black_box(cmd_bytes.as_slice())).expect("decodes"))
    });

    let entry = log_entry(7);
    let entry_bytes = entry.write_to_bytes().expect("entries encode");
    group.bench_function("log_entry/encode", |b| {
        b.iter(|| black_box(&entry).write_to_bytes().expect("entries encode"))
    });
    // The apply worker's path: the stored entry, then the command inside.
    group.bench_function("log_entry/decode_with_cmd", |b| {
        b.iter(|| {
            let e = eraftpb::Entry::parse_from_bytes(black_box(&entry_bytes)).expect("decodes");
            RaftCmdRequest::decode(&e.data[..]).expect("decodes")
        })
    });
    group.finish();
}

fn raft_message(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/raft_message");
    group.throughput(Throughput::Elements(APPEND_ENTRIES));

    let msg = append_message();
    let raft_msg = eraftpb::Message::parse_from_bytes(&msg.message).expect("decodes");
    let wire = msg.encode_to_vec();
    let template = RaftMessage {
        message: Vec::new(),
        ..msg
    };
    // The sender: the raft message into its envelope, the envelope to bytes.
    group.bench_function("append_16/encode", |b| {
        b.iter(|| {
            let mut envelope = template.clone();
            envelope.message = black_box(&raft_msg)
                .write_to_bytes()
                .expect("raft messages encode");
            envelope.encode_to_vec()
        })
    });
    // The receiver: the envelope, then the raft message inside.
    group.bench_function("append_16/decode", |b| {
        b.iter(|| {
            let envelope = RaftMessage::decode(black_box(wire.as_slice())).expect("decodes");
            eraftpb::Message::parse_from_bytes(&envelope.message).expect("decodes")
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = kvrpc, raft_command, raft_message
}
criterion_main!(benches);
