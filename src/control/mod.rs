//! The control protocol between `ekaci` and `eka-ci-server` over the unix socket.
//!
//! A frame is a 4-byte big-endian length, then that many bytes: one protocol-version byte followed by a
//! postcard-encoded [`Request`] or [`Response`]. Frames over the size limit, of another version, or that
//! do not decode are errors for that connection only. This module owns the wire format and the request
//! and response types; it must never execute requests (the daemon's handler does) nor know about sockets
//! beyond reading and writing frames on any async stream.

pub mod client;
pub mod server;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Progress frames carry the pipeline's progress reports as they are (same type, same encoding).
pub use crate::pipeline::Progress;

/// The protocol version byte every frame carries.
/// 2: progress frames carry an evaluation's counts ([`Progress::counts`]).
pub const PROTOCOL_VERSION: u8 = 2;
/// The largest request frame the server accepts (length field value).
pub const MAX_REQUEST_FRAME: u32 = 1 << 20;
/// The largest response frame the client accepts.
pub const MAX_RESPONSE_FRAME: u32 = 64 << 20;

/// What a client asks the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Version, uptime, paths, queue depths and active builds.
    Status,
    /// Evaluate a repository at a revision (every job, or one).
    Eval { repo: String, rev: String, job: Option<String> },
    /// Evaluate two revisions and diff them per job.
    Diff { repo: String, base: String, head: String, job: Option<String> },
    /// Evaluate, diff and build: the local review of `head` against `base`.
    Review { repo: String, base: String, head: String },
    /// Derivations with a build state, optionally only those in `state` (a state name such as
    /// `failure`), at most `limit`.
    Builds { state: Option<String>, limit: u32 },
    /// The build log of a derivation (latest attempt unless `attempt`); with `follow`, keeps streaming
    /// while the build runs.
    Log { drv: String, attempt: Option<u32>, follow: bool },
    /// Requeue a derivation in a final state and wait for its result.
    Rebuild { drv: String },
    /// Cancel the builds of a jobset.
    Cancel { jobset: u64 },
    /// Cancel one derivation that is queued or building (its dependents become `blocked`).
    CancelDrv { drv: String },
    /// Approve the held head commit of pull request `number` of `repo` (`owner/repo`) for
    /// `require_approval`; with `sha`, only if that commit (or prefix) is the held head.
    Approve { repo: String, number: u64, sha: Option<String> },
    /// Change or list the users whose pull requests need no approval.
    ApprovedUsers(ApprovedUsersOp),
    /// Evaluate two revisions of a local repository and compute their change summary (every job, or
    /// one).
    Summary { repo: String, base: String, head: String, job: Option<String> },
    /// Create, list or revoke HTTP API tokens.
    Tokens(TokensOp),
    /// Run retention now (`[retention]`) and report what it freed.
    Gc,
    /// Change or list the package maintainers an administrator added (`@eka-ci merge`).
    Maintainers(MaintainersOp),
    /// Stored results of repository checks: those of `commit` (a full SHA), else the `limit` newest.
    Checks { commit: Option<String>, limit: u32 },
    /// The whole output of check `name` at `commit` (the last [`MAX_CHECK_OUTPUT`] bytes of it).
    CheckOutput { commit: String, name: String },
    /// Enable, disable or list auto-merge of pull requests (docs/merge.md, "Auto-merge").
    AutoMerge(AutoMergeOp),
    /// Cache pushes, most recently changed first, at most `limit`; with `failed`, only those given up or
    /// whose last attempt failed.
    Pushes { failed: bool, limit: u32 },
    /// [`Request::Review`] with options: with `no_build`, evaluate, diff and summarise without building
    /// anything (`ekaci review --no-build`). A variant of its own, last, because postcard encodes a
    /// struct variant's fields with no names or count: a field added to `Review` would make the server
    /// refuse every `Review` frame of an older client, while a new variant leaves those as they are.
    ReviewWith {
        repo: String,
        base: String,
        head: String,
        #[serde(default)]
        no_build: bool,
    },
}

/// What [`Request::AutoMerge`] does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AutoMergeOp {
    /// Enable auto-merge of `repo` (`owner/name`) #`number`, with `method` when given.
    Enable { repo: String, number: u64, method: Option<String> },
    /// Disable it.
    Disable { repo: String, number: u64 },
    /// Every pull request with auto-merge on.
    List,
}

/// The most output of one check a [`Response::CheckOutput`] carries (its end).
pub const MAX_CHECK_OUTPUT: u64 = 32 << 20;

/// What [`Request::Maintainers`] does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MaintainersOp {
    /// Make `login` a maintainer of `attr` in `repo` (`owner/name`).
    Add { repo: String, attr: String, login: String },
    /// Remove that row.
    Remove { repo: String, attr: String, login: String },
    /// Every row, or those of one repository.
    List { repo: Option<String> },
}

/// What [`Request::Tokens`] does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokensOp {
    /// Create a token; the answer carries it, once.
    Create { name: String, scope: crate::tokens::Scope },
    /// List every token (never the token itself, nor its hash).
    List,
    /// Revoke the token of this name.
    Revoke(String),
}

/// What [`Request::ApprovedUsers`] does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApprovedUsersOp {
    /// Add a GitHub login.
    Add(String),
    /// Remove a GitHub login.
    Remove(String),
    /// List every approved user.
    List,
}

/// What the server answers. One request gets any number of non-final frames ([`Response::Progress`],
/// [`Response::LogData`]) followed by exactly one final response (any other variant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Not final: how far a long request has come.
    Progress(Progress),
    /// Not final: the next bytes of a build log (as-is, possibly not UTF-8).
    LogData(Vec<u8>),
    Status(StatusInfo),
    Eval(crate::pipeline::EvalReport),
    Diff(crate::pipeline::DiffReport),
    Review(crate::pipeline::ReviewReport),
    Builds(Vec<BuildSummary>),
    /// The end of a log: the attempt shown and the derivation's state when the stream ended.
    LogEnd {
        attempt: u32,
        state: String,
    },
    /// The state a rebuilt derivation ended in.
    Rebuilt {
        drv: String,
        state: String,
        detail: Option<String>,
        ok: bool,
    },
    /// A jobset's builds were cancelled.
    Cancelled {
        jobset: u64,
    },
    /// One derivation was cancelled.
    CancelledDrv {
        drv: String,
    },
    /// The request could not be served; the message says why.
    Error {
        message: String,
    },
    /// Commit `sha` (full, lowercase) of a pull request is approved; `newly` is false when it already
    /// was. `repo` is lowercased.
    Approved {
        repo: String,
        number: u64,
        sha: String,
        newly: bool,
    },
    /// The answer to an `ApprovedUsers` add or remove: the login (lowercased) and whether anything changed.
    ApprovedUserChanged {
        login: String,
        changed: bool,
    },
    /// The approved users, by login.
    ApprovedUsers(Vec<crate::forge::github::approvals::ApprovedUser>),
    /// The change summary of a local change, and its markdown rendering.
    Summary {
        summary: crate::summary::ChangeSummary,
        markdown: String,
    },
    /// A token was created: the only time the token itself is sent anywhere.
    TokenCreated {
        name: String,
        scope: crate::tokens::Scope,
        token: crate::tokens::NewToken,
    },
    /// Every API token (never the token itself, nor its hash).
    Tokens(Vec<crate::tokens::TokenInfo>),
    /// A token was revoked.
    TokenRevoked {
        name: String,
    },
    /// What a retention pass freed.
    Gc(crate::retention::GcReport),
    /// The answer to a `Maintainers` add or remove: the row (repository and login lowercased) and whether
    /// anything changed.
    MaintainerChanged {
        repo: String,
        attr: String,
        login: String,
        changed: bool,
    },
    /// The maintainers table, ordered by repository, attribute and login.
    Maintainers(Vec<crate::forge::github::maintainers::Maintainer>),
    /// Stored check results.
    Checks(Vec<crate::checks::results::StoredCheck>),
    /// A check's output (as-is, possibly not UTF-8); `truncated` when only its end is sent.
    CheckOutput {
        output: Vec<u8>,
        truncated: bool,
    },
    /// The answer to an `AutoMerge` enable or disable: whether auto-merge is now on, and whether that
    /// changed anything.
    AutoMergeChanged {
        repo: String,
        number: u64,
        enabled: bool,
        changed: bool,
    },
    /// Every pull request with auto-merge on.
    AutoMerges(Vec<crate::forge::github::auto_merges::AutoMerge>),
    /// Cache pushes (docs/caches.md).
    Pushes(Vec<crate::cache::PushEntry>),
}

impl Response {
    /// Whether this is the last frame of its request.
    pub fn is_final(&self) -> bool {
        !matches!(self, Response::Progress(_) | Response::LogData(_))
    }
}

/// One line of `ekaci builds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSummary {
    pub drv: String,
    pub state: String,
    pub detail: Option<String>,
    pub attempt: u32,
}

/// The answer to [`Request::Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub db_path: String,
    pub socket_path: String,
    pub http_address: String,
    pub schema_version: u32,
    pub queues: QueueDepths,
    pub active_builds: u64,
    /// Whether evaluation runs under Nix's `restrict-eval` (`[evaluation] restrict_eval`).
    pub restrict_eval: bool,
    /// The local Nix's `sandbox` setting as Nix spells it (`true`, `relaxed` or `false`).
    pub sandbox: String,
    /// Every builder with its health (remote builders are probed; see `scheduler::health`).
    pub builders: Vec<crate::scheduler::BuilderStatus>,
}

/// Work waiting in the server's queues.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueDepths {
    pub evaluations: u64,
    pub builds: u64,
    pub github_events: u64,
    /// GitHub runs (pull request or merge group heads) queued or running.
    pub github_runs: u64,
    /// GitHub runs held by `require_approval` until approved.
    pub github_held: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    #[error("empty frame (no version byte)")]
    Empty,
    #[error("protocol version {found} not supported (this side speaks version {PROTOCOL_VERSION})")]
    Version { found: u8 },
    #[error("malformed message: {0}")]
    Decode(postcard::Error),
    #[error("cannot encode message: {0}")]
    Encode(postcard::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes one frame holding `msg`.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let mut body = vec![PROTOCOL_VERSION];
    body = postcard::to_extend(msg, body).map_err(FrameError::Encode)?;
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge { len: u32::MAX, max: u32::MAX })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame of at most `max` bytes and decodes it. The length is checked before anything else is
/// read, so an oversized frame costs nothing.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: u32,
) -> Result<T, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    if body[0] != PROTOCOL_VERSION {
        return Err(FrameError::Version { found: body[0] });
    }
    postcard::from_bytes(&body[1..]).map_err(FrameError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_requests_keep_their_encoding() {
        // An older client's `Review` frame: variant 3, then the three strings.
        let old = [3, 1, b'r', 1, b'b', 1, b'h'];
        let request = Request::Review { repo: "r".into(), base: "b".into(), head: "h".into() };
        assert_eq!(postcard::to_allocvec(&request).expect("encodes"), old);
        assert_eq!(postcard::from_bytes::<Request>(&old).expect("decodes"), request);
        // The options travel in a variant of their own, after every older one.
        let with =
            Request::ReviewWith { repo: "r".into(), base: "b".into(), head: "h".into(), no_build: true };
        let bytes = postcard::to_allocvec(&with).expect("encodes");
        assert_eq!(bytes, [19, 1, b'r', 1, b'b', 1, b'h', 1]);
        assert_eq!(postcard::from_bytes::<Request>(&bytes).expect("decodes"), with);
    }

    #[test]
    fn progress_frames_keep_their_encoding() {
        // Variant 0, the stage as a length-prefixed string, then `done` and `total` as varints, then the
        // optional counts (protocol version 2).
        let frame = Response::Progress(Progress { stage: "ab".into(), done: 1, total: 300, counts: None });
        let bytes = postcard::to_allocvec(&frame).expect("encodes");
        assert_eq!(bytes, [0, 2, b'a', b'b', 1, 0xac, 0x02, 0]);
        assert_eq!(postcard::from_bytes::<Response>(&bytes).expect("decodes"), frame);
        let counts = crate::nix::eval::EvalCounts { listed: 4, evaluated: 3, instantiated: 2, errors: 1 };
        let frame = Response::Progress(Progress {
            counts: Some(counts),
            ..Progress { stage: "ab".into(), done: 1, total: 300, counts: None }
        });
        let bytes = postcard::to_allocvec(&frame).expect("encodes");
        assert_eq!(bytes, [0, 2, b'a', b'b', 1, 0xac, 0x02, 1, 4, 3, 2, 1]);
        assert_eq!(postcard::from_bytes::<Response>(&bytes).expect("decodes"), frame);
    }
}
