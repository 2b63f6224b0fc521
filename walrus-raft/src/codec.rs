//! Byte encodings of what walrus-raft stores: raft log records (entries and truncation marks)
//! and snapshot bodies. Little-endian, length-prefixed; every decoder checks every length and
//! returns `InvalidData` on any input it does not understand, never panics.
//!
//! Log records live in Walrus entries, which carry their own CRC32C; a snapshot body ends with
//! its own CRC32C, since it also travels over the network and sits in a file.

use std::io;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest};
use openraft::{BasicNode, CommittedLeaderId, EntryPayload, LogId, Membership, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};

use crate::{NodeId, Request, TypeConfig};

/// A raft log entry.
pub(crate) type Entry = openraft::Entry<TypeConfig>;

const RECORD_ENTRY: u8 = 1;
const RECORD_TRUNCATE: u8 = 2;

const PAYLOAD_BLANK: u8 = 0;
const PAYLOAD_NORMAL: u8 = 1;
const PAYLOAD_MEMBERSHIP: u8 = 2;

const REQUEST_APPEND: u8 = 1;
const REQUEST_COMMIT: u8 = 2;
const REQUEST_BATCH: u8 = 3;
/// Batches inside batches nest this deep at most: deeper ones do not encode, so decoding
/// recurses no further. (The state machine refuses any batch inside a batch; the
/// [`Writer`](crate::Writer) refuses them before they reach raft, and these only come from a
/// direct `client_write`.)
const MAX_NESTING: usize = 8;

/// What one entry of the log topic says.
#[derive(Debug)]
pub(crate) enum LogRecord {
    /// A raft entry; it replaces every entry at its index and above.
    Entry(Entry),
    /// Entries at `since` and above are gone.
    Truncate { since: u64 },
}

/// Appends fields to a byte buffer.
#[derive(Debug, Default)]
pub(crate) struct Enc(pub(crate) Vec<u8>);

impl Enc {
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A length-prefixed byte string.
    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u64(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }
}

/// Reads fields back; every read checks the length left.
#[derive(Debug)]
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Dec<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(invalid(format!(
                "{}: truncated ({} bytes left, {n} needed)",
                self.what,
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u64(&mut self) -> io::Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    pub(crate) fn bytes(&mut self) -> io::Result<&'a [u8]> {
        let len = self.u64()?;
        let len =
            usize::try_from(len).map_err(|_| invalid(format!("{}: length {len}", self.what)))?;
        self.take(len)
    }
    pub(crate) fn string(&mut self) -> io::Result<String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec())
            .map_err(|_| invalid(format!("{}: a name is not UTF-8", self.what)))
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    pub(crate) fn end(&self) -> io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(invalid(format!(
                "{}: {} trailing bytes",
                self.what,
                self.buf.len()
            )))
        }
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The bytes of a log record holding `entry`.
pub(crate) fn encode_entry(entry: &Entry) -> io::Result<Vec<u8>> {
    if entry.log_id.index > MAX_INDEX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "raft log: index {} past the last there is ({MAX_INDEX})",
                entry.log_id.index
            ),
        ));
    }
    let mut e = Enc::default();
    e.u8(RECORD_ENTRY);
    encode_log_id(&mut e, &entry.log_id);
    match &entry.payload {
        EntryPayload::Blank => {
            e.u8(PAYLOAD_BLANK);
        }
        EntryPayload::Normal(request) => {
            e.u8(PAYLOAD_NORMAL);
            encode_request(&mut e, request, 0)?;
        }
        EntryPayload::Membership(m) => {
            e.u8(PAYLOAD_MEMBERSHIP);
            let json = serde_json::to_vec(m).map_err(io::Error::other)?;
            e.0.extend_from_slice(&json);
        }
    }
    Ok(e.0)
}

/// The bytes of a truncation mark.
pub(crate) fn encode_truncate(since: u64) -> Vec<u8> {
    let mut e = Enc::default();
    e.u8(RECORD_TRUNCATE).u64(since);
    e.0
}

pub(crate) fn decode_record(buf: &[u8]) -> io::Result<LogRecord> {
    let mut d = Dec::new(buf, "raft log record");
    match d.u8()? {
        RECORD_ENTRY => {
            let log_id = decode_log_id(&mut d)?;
            let payload = match d.u8()? {
                PAYLOAD_BLANK => EntryPayload::Blank,
                PAYLOAD_NORMAL => EntryPayload::Normal(decode_request(&mut d, 0)?),
                PAYLOAD_MEMBERSHIP => {
                    let m: Membership<NodeId, openraft::BasicNode> =
                        serde_json::from_slice(d.rest()).map_err(|e| {
                            invalid(format!(
                                "raft log record: membership at index {}: {e}",
                                log_id.index
                            ))
                        })?;
                    EntryPayload::Membership(m)
                }
                k => return Err(invalid(format!("raft log record: payload kind {k}"))),
            };
            d.end()?;
            Ok(LogRecord::Entry(Entry { log_id, payload }))
        }
        RECORD_TRUNCATE => {
            let since = d.u64()?;
            d.end()?;
            Ok(LogRecord::Truncate { since })
        }
        k => Err(invalid(format!("raft log record: kind {k}"))),
    }
}

pub(crate) fn encode_log_id(e: &mut Enc, id: &LogId<NodeId>) {
    e.u64(id.leader_id.term)
        .u64(id.leader_id.node_id)
        .u64(id.index);
}

/// The highest log index a record holds: far past any log, and low enough that the log's
/// index arithmetic (`first + len`, `index + 1`) never overflows on a decoded one.
pub(crate) const MAX_INDEX: u64 = 1 << 62;

pub(crate) fn decode_log_id(d: &mut Dec<'_>) -> io::Result<LogId<NodeId>> {
    let term = d.u64()?;
    let node_id = d.u64()?;
    let index = d.u64()?;
    if index > MAX_INDEX {
        return Err(invalid(format!(
            "raft log id: index {index} past the last there is ({MAX_INDEX})"
        )));
    }
    Ok(LogId::new(CommittedLeaderId::new(term, node_id), index))
}

/// Encodes a request at `depth` batches deep: whatever encodes decodes.
fn encode_request(e: &mut Enc, r: &Request, depth: usize) -> io::Result<()> {
    match r {
        Request::Append { topic, data } => {
            e.u8(REQUEST_APPEND).bytes(topic.as_bytes()).bytes(data);
        }
        Request::Commit {
            topic,
            consumer,
            offset,
        } => {
            e.u8(REQUEST_COMMIT)
                .bytes(topic.as_bytes())
                .bytes(consumer.as_bytes())
                .u64(*offset);
        }
        Request::Batch { requests } => {
            if depth >= MAX_NESTING {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("raft request: batches nested over {MAX_NESTING} deep"),
                ));
            }
            e.u8(REQUEST_BATCH).u64(requests.len() as u64);
            for r in requests {
                encode_request(e, r, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// Decodes a request at `depth` batches deep (bounded, see [`MAX_NESTING`]).
fn decode_request(d: &mut Dec<'_>, depth: usize) -> io::Result<Request> {
    match d.u8()? {
        REQUEST_BATCH if depth < MAX_NESTING => {
            let n = d.u64()?;
            let mut requests = Vec::new();
            for _ in 0..n {
                requests.push(decode_request(d, depth + 1)?);
            }
            Ok(Request::Batch { requests })
        }
        REQUEST_APPEND => Ok(Request::Append {
            topic: d.string()?,
            data: d.bytes()?.to_vec(),
        }),
        REQUEST_COMMIT => Ok(Request::Commit {
            topic: d.string()?,
            consumer: d.string()?,
            offset: d.u64()?,
        }),
        k => Err(invalid(format!("raft log record: request kind {k}"))),
    }
}

/// Appends the CRC32C of everything so far.
pub(crate) fn seal(mut buf: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

/// Checks and strips the CRC32C that [`seal`] appended.
pub(crate) fn unseal<'a>(buf: &'a [u8], what: &str) -> io::Result<&'a [u8]> {
    if buf.len() < 4 {
        return Err(invalid(format!("{what}: {} bytes, too short", buf.len())));
    }
    let (body, tail) = buf.split_at(buf.len() - 4);
    let mut a = [0u8; 4];
    a.copy_from_slice(tail);
    let stored = u32::from_le_bytes(a);
    let actual = crc32c::crc32c(body);
    if stored != actual {
        return Err(invalid(format!(
            "{what}: checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        )));
    }
    Ok(body)
}

/// The small fields of an append RPC (JSON); the entries follow as log records.
#[derive(Serialize, Deserialize)]
struct AppendHeader {
    vote: Vote<NodeId>,
    prev_log_id: Option<LogId<NodeId>>,
    leader_commit: Option<LogId<NodeId>>,
}

/// The small fields of a snapshot chunk RPC (JSON); the chunk's bytes follow, raw.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, BasicNode>,
    offset: u64,
    done: bool,
}

fn json<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(io::Error::other)
}

fn from_json<'a, T: Deserialize<'a>>(b: &'a [u8], what: &str) -> io::Result<T> {
    serde_json::from_slice(b).map_err(|e| invalid(format!("{what}: {e}")))
}

/// An append RPC on the wire: `bytes header (JSON) | u64 count | count x bytes log record`.
/// Entries travel in the log's own encoding: JSON would spend up to four characters a byte.
pub(crate) fn encode_append_rpc(req: &AppendEntriesRequest<TypeConfig>) -> io::Result<Vec<u8>> {
    let mut e = Enc::default();
    e.bytes(&json(&AppendHeader {
        vote: req.vote,
        prev_log_id: req.prev_log_id,
        leader_commit: req.leader_commit,
    })?);
    e.u64(req.entries.len() as u64);
    for entry in &req.entries {
        e.bytes(&encode_entry(entry)?);
    }
    Ok(e.0)
}

pub(crate) fn decode_append_rpc(buf: &[u8]) -> io::Result<AppendEntriesRequest<TypeConfig>> {
    let mut d = Dec::new(buf, "append RPC");
    let h: AppendHeader = from_json(d.bytes()?, "append RPC header")?;
    let n = d.u64()?;
    let mut entries = Vec::new();
    for _ in 0..n {
        match decode_record(d.bytes()?)? {
            LogRecord::Entry(e) => entries.push(e),
            LogRecord::Truncate { .. } => return Err(invalid("append RPC: a truncation mark")),
        }
    }
    d.end()?;
    // openraft takes the entries to follow `prev_log_id` one by one (it checks only the first,
    // and only in debug builds): a gap written to the log would fail the node at its next
    // start. Refused here, before anything is written.
    let mut next = h.prev_log_id.map_or(0, |p| p.index.saturating_add(1));
    for e in &entries {
        if e.log_id.index != next {
            return Err(invalid(format!(
                "append RPC: entry {} where {next} follows the previous one",
                e.log_id.index
            )));
        }
        next = next.saturating_add(1);
    }
    Ok(AppendEntriesRequest {
        vote: h.vote,
        prev_log_id: h.prev_log_id,
        entries,
        leader_commit: h.leader_commit,
    })
}

/// A snapshot chunk RPC on the wire: `bytes header (JSON) | the chunk's bytes`.
pub(crate) fn encode_snapshot_rpc(req: &InstallSnapshotRequest<TypeConfig>) -> io::Result<Vec<u8>> {
    let mut e = Enc::default();
    e.bytes(&json(&SnapshotHeader {
        vote: req.vote,
        meta: req.meta.clone(),
        offset: req.offset,
        done: req.done,
    })?);
    e.0.extend_from_slice(&req.data);
    Ok(e.0)
}

pub(crate) fn decode_snapshot_rpc(buf: &[u8]) -> io::Result<InstallSnapshotRequest<TypeConfig>> {
    let mut d = Dec::new(buf, "snapshot RPC");
    let h: SnapshotHeader = from_json(d.bytes()?, "snapshot RPC header")?;
    Ok(InstallSnapshotRequest {
        vote: h.vote,
        meta: h.meta,
        offset: h.offset,
        data: d.rest().to_vec(),
        done: h.done,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn entries() -> Vec<Entry> {
        let id = |t, n, i| LogId::new(CommittedLeaderId::new(t, n), i);
        vec![
            Entry {
                log_id: id(1, 2, 3),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: id(4, 5, 6),
                payload: EntryPayload::Normal(Request::Append {
                    topic: "orders".into(),
                    data: b"hello".to_vec(),
                }),
            },
            Entry {
                log_id: id(7, 8, 9),
                payload: EntryPayload::Normal(Request::Commit {
                    topic: "orders".into(),
                    consumer: "billing".into(),
                    offset: 42,
                }),
            },
            Entry {
                log_id: id(9, 1, 10),
                payload: EntryPayload::Normal(Request::Batch {
                    requests: vec![
                        Request::Append {
                            topic: "a".into(),
                            data: vec![1, 2],
                        },
                        Request::Commit {
                            topic: "b".into(),
                            consumer: String::new(),
                            offset: 0,
                        },
                    ],
                }),
            },
            Entry {
                log_id: id(10, 1, 11),
                payload: EntryPayload::Membership(Membership::new(
                    vec![BTreeSet::from([1, 2, 3])],
                    None,
                )),
            },
        ]
    }

    #[test]
    fn records_round_trip() {
        for e in entries() {
            let bytes = encode_entry(&e).unwrap();
            match decode_record(&bytes).unwrap() {
                LogRecord::Entry(back) => assert_eq!(back, e),
                other => panic!("{other:?}"),
            }
        }
        match decode_record(&encode_truncate(77)).unwrap() {
            LogRecord::Truncate { since } => assert_eq!(since, 77),
            other => panic!("{other:?}"),
        }
    }

    /// Every prefix, and every single-byte change, decodes to an error or to some record:
    /// never a panic.
    #[test]
    fn damaged_records_never_panic() {
        for e in entries() {
            let bytes = encode_entry(&e).unwrap();
            for len in 0..bytes.len() {
                assert!(
                    decode_record(&bytes[..len]).is_err(),
                    "prefix {len} of {e:?}"
                );
            }
            for i in 0..bytes.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut b = bytes.clone();
                    b[i] ^= flip;
                    let _ = decode_record(&b);
                }
            }
        }
        // Batches inside batches: what encodes decodes (a log entry that does not would stop
        // the node for good), and nesting stays bounded both ways.
        let mut nested = Request::Append {
            topic: "t".into(),
            data: b"x".to_vec(),
        };
        for depth in 1..=MAX_NESTING {
            nested = Request::Batch {
                requests: vec![nested, Request::Batch { requests: vec![] }],
            };
            let entry = Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
                payload: EntryPayload::Normal(nested.clone()),
            };
            match encode_entry(&entry) {
                Ok(bytes) => {
                    assert!(depth < MAX_NESTING, "depth {depth} encoded");
                    match decode_record(&bytes).unwrap() {
                        LogRecord::Entry(e) => assert_eq!(e, entry, "depth {depth}"),
                        other => panic!("depth {depth}: {other:?}"),
                    }
                }
                Err(e) => {
                    assert_eq!(depth, MAX_NESTING, "depth {depth}: {e}");
                    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
                }
            }
        }
        // Crafted bytes nested deeper than that do not decode.
        let mut e = Enc::default();
        e.u8(RECORD_ENTRY);
        encode_log_id(&mut e, &LogId::new(CommittedLeaderId::new(1, 1), 1));
        e.u8(PAYLOAD_NORMAL);
        for _ in 0..=MAX_NESTING {
            e.u8(REQUEST_BATCH).u64(1);
        }
        e.u8(REQUEST_APPEND).bytes(b"t").bytes(b"x");
        assert!(decode_record(&e.0).is_err());
        let mut long = encode_truncate(1);
        long.push(0);
        assert!(decode_record(&long).is_err());
        // An index past MAX_INDEX neither encodes nor decodes.
        let mut far = entries().remove(0);
        far.log_id.index = MAX_INDEX + 1;
        assert_eq!(
            encode_entry(&far).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let mut e = Enc::default();
        e.u8(RECORD_ENTRY);
        encode_log_id(&mut e, &far.log_id);
        e.u8(PAYLOAD_BLANK);
        assert_eq!(
            decode_record(&e.0).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    /// A decoder answered: with a value, or with an error of the kind that says the bytes are
    /// bad.
    fn answered(r: &io::Result<impl std::fmt::Debug>) -> bool {
        r.as_ref().is_ok()
            || r.as_ref().is_err_and(|e| {
                matches!(
                    e.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
                )
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
        ))]

        /// The log records have no checksum (the Walrus frame around them does): whatever the
        /// bytes, the decoders answer, never panic, and refuse with `InvalidData`.
        #[test]
        fn decoders_answer_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            proptest::prop_assert!(answered(&decode_record(&bytes)));
            proptest::prop_assert!(answered(&decode_append_rpc(&bytes)));
            proptest::prop_assert!(answered(&decode_snapshot_rpc(&bytes)));
            proptest::prop_assert!(answered(&unseal(&bytes, "test")));
        }

        /// Valid encodings with bytes changed and cut: the decoders answer, never panic.
        #[test]
        fn decoders_answer_damaged_encodings(
            changes in proptest::collection::vec((proptest::prelude::any::<usize>(), 1..=255u8), 1..6),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let rpc = AppendEntriesRequest::<TypeConfig> {
                vote: Vote::new_committed(3, 1),
                prev_log_id: None,
                entries: entries().into_iter().zip(0..).map(|(mut e, i)| { e.log_id.index = i; e }).collect(),
                leader_commit: None,
            };
            let mut valid: Vec<Vec<u8>> = entries().iter().map(|e| encode_entry(e).unwrap()).collect();
            valid.push(encode_truncate(7));
            valid.push(encode_append_rpc(&rpc).unwrap());
            for mut b in valid {
                for (at, x) in &changes {
                    let n = b.len();
                    b[at % n] ^= x;
                }
                b.truncate(cut % (b.len() + 1));
                proptest::prop_assert!(answered(&decode_record(&b)));
                proptest::prop_assert!(answered(&decode_append_rpc(&b)));
            }
        }
    }

    #[test]
    fn rpcs_round_trip_and_reject_damage() {
        // Entries 3, 4, 5, … after the previous entry 2.
        let following: Vec<Entry> = entries()
            .into_iter()
            .zip(3..)
            .map(|(mut e, i)| {
                e.log_id.index = i;
                e
            })
            .collect();
        let mut req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 2)),
            entries: following,
            leader_commit: None,
        };
        let bytes = encode_append_rpc(&req).unwrap();
        let back = decode_append_rpc(&bytes).unwrap();
        assert_eq!(back.entries, req.entries);
        assert_eq!((back.vote, back.prev_log_id), (req.vote, req.prev_log_id));
        for len in 0..bytes.len() {
            assert!(decode_append_rpc(&bytes[..len]).is_err(), "prefix {len}");
        }
        // Entries that do not follow one another, or the previous entry, are refused.
        for (at, index) in [(1, 5), (0, 2), (0, 4)] {
            let mut gapped = req.clone();
            gapped.entries[at].log_id.index = index;
            let e = decode_append_rpc(&encode_append_rpc(&gapped).unwrap()).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        }
        req.prev_log_id = None;
        assert!(decode_append_rpc(&encode_append_rpc(&req).unwrap()).is_err());
        let snap = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta::default(),
            offset: 7,
            data: vec![1, 2, 3],
            done: true,
        };
        let back = decode_snapshot_rpc(&encode_snapshot_rpc(&snap).unwrap()).unwrap();
        assert_eq!(
            (back.offset, back.data, back.done),
            (7, vec![1, 2, 3], true)
        );
        assert!(decode_snapshot_rpc(&[1, 2, 3]).is_err());
    }

    #[test]
    fn seal_detects_damage() {
        let sealed = seal(b"snapshot body".to_vec());
        assert_eq!(unseal(&sealed, "t").unwrap(), b"snapshot body");
        for i in 0..sealed.len() {
            let mut b = sealed.clone();
            b[i] ^= 0x10;
            assert_eq!(
                unseal(&b, "t").unwrap_err().kind(),
                io::ErrorKind::InvalidData
            );
        }
        assert!(unseal(&sealed[..3], "t").is_err());
    }
}
