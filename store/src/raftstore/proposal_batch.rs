//! Client writes merged into one raft entry.
//!
//! A leader that receives many small writes in one poll round proposes them
//! as ONE command: one log entry, one record per store in the raft log and
//! one decode and epoch check at apply, instead of one of each per write.
//! Every caller still gets exactly its own answer: [`Waiters`] remembers
//! which run of the command's requests belongs to whom.

use concord_proto::raft_cmdpb::{request, RaftCmdRequest, RaftRequestHeader, Request};

use super::msg::{Callback, CmdResponse, CmdResult};

/// Most requests merged into one entry.
const MAX_REQUESTS: usize = 256;
/// Most key and value bytes merged into one entry; a bigger write travels
/// alone.
const MAX_BYTES: usize = 256 << 10;

/// The callers waiting on one proposed command, each owning a consecutive
/// run of its requests (and so of its responses).
pub struct Waiters(Vec<(usize, Callback)>);

impl Waiters {
    /// The one caller of an unmerged command (who gets its whole answer).
    pub fn one(callback: Callback) -> Waiters {
        Waiters(vec![(usize::MAX, callback)])
    }

    /// How many callers wait.
    pub fn callers(&self) -> usize {
        self.0.len()
    }

    /// Answers every caller: an error goes to each, a response is cut into
    /// each caller's run (an unmerged command's caller gets it whole).
    pub fn answer(self, result: CmdResult) {
        let mut callers = self.0;
        if callers.len() == 1 {
            let (_, cb) = callers.pop().expect("one caller");
            let _ = cb.send(result);
            return;
        }
        match result {
            Err(e) => {
                for (_, cb) in callers {
                    let _ = cb.send(Err(e.clone()));
                }
            }
            Ok(resp) => {
                let mut responses = resp.responses.into_iter();
                for (count, cb) in callers {
                    let _ = cb.send(Ok(CmdResponse {
                        responses: responses.by_ref().take(count).collect(),
                        regions: Vec::new(),
                    }));
                }
            }
        }
    }
}

/// Writes collected during one poll round, to be proposed together.
#[derive(Default)]
pub struct ProposalBatch {
    header: Option<RaftRequestHeader>,
    term: u64,
    requests: Vec<Request>,
    bytes: usize,
    waiters: Vec<(usize, Callback)>,
}

impl ProposalBatch {
    /// Whether `request` may be merged with others: plain puts and deletes
    /// only (their outcome does not depend on other requests).
    pub fn can_merge(request: &RaftCmdRequest) -> bool {
        request.admin_request.is_none()
            && !request.requests.is_empty()
            && request.requests.iter().all(|r| {
                matches!(
                    r.cmd,
                    Some(request::Cmd::Put(_)) | Some(request::Cmd::Delete(_))
                )
            })
    }

    /// Whether `request` (one that [`can_merge`](Self::can_merge)) fits in
    /// this batch: the same region epoch (the only part of the header that
    /// apply checks), and within the size limits.
    pub fn fits(&self, request: &RaftCmdRequest) -> bool {
        let Some(header) = &self.header else {
            return true;
        };
        request.header.unwrap_or_default().region_epoch == header.region_epoch
            && self.requests.len() + request.requests.len() <= MAX_REQUESTS
            && self.bytes + payload_bytes(request) <= MAX_BYTES
    }

    /// Whether no write waits in the batch.
    pub fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    /// Adds `request` and its caller, accepted by a leader of `term`.
    pub fn push(&mut self, request: RaftCmdRequest, callback: Callback, term: u64) {
        self.term = term;
        self.bytes += payload_bytes(&request);
        self.header = Some(request.header.unwrap_or_default());
        self.waiters.push((request.requests.len(), callback));
        self.requests.extend(request.requests);
    }

    /// The merged command, its callers and the term they were accepted in,
    /// if any write was added.
    pub fn take(&mut self) -> Option<(RaftCmdRequest, Waiters, u64)> {
        let header = self.header.take()?;
        self.bytes = 0;
        let request = RaftCmdRequest {
            header: Some(header),
            requests: std::mem::take(&mut self.requests),
            admin_request: None,
        };
        Some((
            request,
            Waiters(std::mem::take(&mut self.waiters)),
            self.term,
        ))
    }
}

fn payload_bytes(request: &RaftCmdRequest) -> usize {
    request
        .requests
        .iter()
        .map(|r| match &r.cmd {
            Some(request::Cmd::Put(p)) => p.key.len() + p.value.len(),
            Some(request::Cmd::Delete(d)) => d.key.len(),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::metapb::RegionEpoch;
    use concord_proto::raft_cmdpb::{CasRequest, CasResponse, PutRequest, Response};
    use tokio::sync::oneshot;

    fn put(key: &str, value_len: usize) -> Request {
        Request {
            cmd: Some(request::Cmd::Put(PutRequest {
                cf: "default".into(),
                key: key.as_bytes().to_vec(),
                value: vec![0; value_len],
            })),
        }
    }

    fn command(version: u64, requests: Vec<Request>) -> RaftCmdRequest {
        RaftCmdRequest {
            header: Some(RaftRequestHeader {
                region_id: 1,
                region_epoch: Some(RegionEpoch {
                    version,
                    conf_ver: 1,
                }),
                ..Default::default()
            }),
            requests,
            admin_request: None,
        }
    }

    #[test]
    fn only_plain_writes_of_one_epoch_merge_within_limits() {
        let cas = Request {
            cmd: Some(request::Cmd::Cas(CasRequest::default())),
        };
        assert!(ProposalBatch::can_merge(&command(1, vec![put("a", 1)])));
        assert!(!ProposalBatch::can_merge(&command(
            1,
            vec![put("a", 1), cas]
        )));
        assert!(!ProposalBatch::can_merge(&command(1, vec![])));

        let mut batch = ProposalBatch::default();
        assert!(batch.take().is_none());
        assert!(batch.is_empty());
        batch.push(command(1, vec![put("a", 1)]), oneshot::channel().0, 3);
        assert!(batch.fits(&command(1, vec![put("b", 1)])));
        assert!(!batch.fits(&command(2, vec![put("b", 1)])), "other epoch");
        assert!(
            !batch.fits(&command(1, vec![put("b", MAX_BYTES)])),
            "too big"
        );
        for i in 1..MAX_REQUESTS {
            batch.push(
                command(1, vec![put(&i.to_string(), 1)]),
                oneshot::channel().0,
                3,
            );
        }
        assert!(!batch.fits(&command(1, vec![put("z", 1)])), "too many");
        let (merged, waiters, term) = batch.take().unwrap();
        assert_eq!(term, 3, "the term the writes were accepted in");
        assert_eq!(merged.requests.len(), MAX_REQUESTS);
        assert_eq!(waiters.callers(), MAX_REQUESTS);
        assert!(batch.take().is_none(), "take empties the batch");
        assert!(batch.is_empty());
    }

    #[test]
    fn each_caller_gets_its_own_responses_or_the_error() {
        let mut batch = ProposalBatch::default();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        batch.push(command(1, vec![put("a", 1), put("b", 1)]), tx1, 3);
        batch.push(command(1, vec![put("c", 1)]), tx2, 3);
        let (_, waiters, _) = batch.take().unwrap();
        let responses = (0..3)
            .map(|i| Response {
                cas: Some(CasResponse {
                    succeed: i == 2,
                    ..Default::default()
                }),
            })
            .collect();
        waiters.answer(Ok(CmdResponse {
            responses,
            regions: Vec::new(),
        }));
        let first = rx1.try_recv().unwrap().unwrap().responses;
        let second = rx2.try_recv().unwrap().unwrap().responses;
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|r| !r.cas.as_ref().unwrap().succeed));
        assert_eq!(second.len(), 1);
        assert!(second[0].cas.as_ref().unwrap().succeed);

        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        batch.push(command(1, vec![put("a", 1)]), tx1, 3);
        batch.push(command(1, vec![put("b", 1)]), tx2, 3);
        let (_, waiters, _) = batch.take().unwrap();
        waiters.answer(Err(super::super::msg::CmdError::stale_command()));
        assert!(rx1.try_recv().unwrap().is_err());
        assert!(rx2.try_recv().unwrap().is_err());
    }
}
