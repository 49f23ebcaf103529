//! The scheduler's public face: [`SchedulerHandle`], the cheap handle every other module uses to talk to the
//! loop, the [`Command`]s it sends over the loop's inbox, and the result and error types of its API. It holds
//! no scheduling state and changes no build state itself: every method is a message to the loop.

use async_channel::Sender;

use crate::graph::{DrvId, GraphError};
use crate::jobset::JobsetId;
use crate::store::StoreError;

use super::engine::BatchId;
use super::runner::BuildEvent;
use super::state::{Attempt, DrvState, HistoryEntry, OwnerStatus};
use super::Owner;

/// Errors of the scheduler's API.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("derivation {path} is not in the derivation graph (discover it first)")]
    UnknownDerivation { path: String },
    #[error("derivation {path} was never requested: there is nothing to rebuild")]
    NeverRequested { path: String },
    #[error("derivation {path} is {state}, not in a final state: it cannot be rebuilt now")]
    NotTerminal { path: String, state: String },
    #[error("derivation {path} is {state}: only a queued or running derivation can be cancelled")]
    NotActive { path: String, state: String },
    #[error("no build owner {owner}")]
    UnknownOwner { owner: Owner },
    #[error("owner id {owner} is reserved for rebuild requests")]
    ReservedOwner { owner: Owner },
    #[error("recording build state failed: {0}")]
    Persist(String),
    #[error("a blocking task of the scheduler failed: {0}")]
    Task(String),
    #[error("the scheduler is not running")]
    Stopped,
    #[error("build owner {owner} was cancelled")]
    Cancelled { owner: Owner },
}

/// The final state of one root of an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootOutcome {
    pub drv: String,
    /// `None` only if the root has no recorded state (it was never reached).
    pub state: Option<DrvState>,
}

/// What [`SchedulerHandle::wait`] answers: the owner's status and the state of each of its roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerOutcome {
    pub owner: Owner,
    pub status: OwnerStatus,
    pub roots: Vec<RootOutcome>,
}

/// What [`SchedulerHandle::state`] answers about one derivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrvStatus {
    pub state: DrvState,
    /// The number of the last attempt started (0: never built).
    pub attempt: u32,
    pub attempts: Vec<Attempt>,
    /// Every transition, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Why a `Buildable` derivation is not building: every builder that may take it is down
    /// (`no builder available: <builder> down`). `None` otherwise.
    pub waiting: Option<String>,
}

/// A build running now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveBuild {
    pub drv: String,
    pub builder: String,
    pub started_at_ms: u64,
    pub attempt: u32,
}

/// Pending work of one platform (system).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub system: String,
    /// Waiting for dependencies (or for a retry).
    pub queued: usize,
    /// Ready, waiting for a builder or inside a batch that has not started it yet.
    pub buildable: usize,
    pub building: usize,
}

pub(super) type Reply<T> = Sender<Result<T, SchedulerError>>;

pub(super) enum Command {
    Request {
        owner: Owner,
        roots: Vec<String>,
        reply: Reply<()>,
    },
    Wait {
        owner: Owner,
        reply: Reply<OwnerOutcome>,
    },
    Cancel {
        owner: Owner,
        reply: Reply<()>,
    },
    Rebuild {
        drv: String,
        reply: Reply<Owner>,
    },
    CancelDrv {
        drv: String,
        reason: String,
        reply: Reply<()>,
    },
    State {
        drv: String,
        reply: Reply<Option<DrvStatus>>,
    },
    Active {
        reply: Sender<Vec<ActiveBuild>>,
    },
    Depths {
        reply: Sender<Vec<QueueDepth>>,
    },
    Builders {
        reply: Sender<Vec<super::health::BuilderStatus>>,
    },
    Waiting {
        reply: Sender<Vec<(String, String)>>,
    },
    /// A health probe of builder `builder` answered (`Err`: Nix's reason it is unreachable).
    Health {
        builder: usize,
        result: Result<(), String>,
    },
    Batch {
        batch: BatchId,
        event: BuildEvent,
    },
    BatchDone {
        batch: BatchId,
        result: Result<(), crate::scheduler::runner::BatchError>,
    },
    RetryDue {
        drv: DrvId,
    },
    Drain {
        reply: Sender<()>,
    },
    /// A check of `owner` waits for a local worker slot (`engine/checks.rs`).
    CheckSlot {
        owner: Owner,
        reply: Sender<super::engine::CheckSlot>,
    },
    /// A check slot was given back.
    CheckDone {
        slot: u64,
    },
    Shutdown {
        reply: Sender<()>,
    },
}

/// A cheap, cloneable handle to the scheduler loop.
#[derive(Clone)]
pub struct SchedulerHandle {
    pub(super) inbox: Sender<Command>,
}

impl std::fmt::Debug for SchedulerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerHandle").finish_non_exhaustive()
    }
}

impl SchedulerHandle {
    async fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T, SchedulerError> {
        let (tx, rx) = async_channel::bounded(1);
        self.inbox.send(make(tx)).await.map_err(|_| SchedulerError::Stopped)?;
        rx.recv().await.map_err(|_| SchedulerError::Stopped)
    }

    /// Asks for `roots` (.drv paths already in the graph) and everything they need to be built for
    /// `jobset` (the owner [`Owner::Jobset`]). Returns once the request is persisted. Asking again adds
    /// roots. A jobset id in the range of rebuild keys is refused ([`SchedulerError::ReservedOwner`]).
    pub async fn request(&self, jobset: JobsetId, roots: Vec<String>) -> Result<(), SchedulerError> {
        self.ask(|reply| Command::Request { owner: Owner::Jobset(jobset), roots, reply }).await?
    }

    /// Resolves when every derivation `owner` needs is in a final state (or the owner is cancelled).
    pub async fn wait(&self, owner: impl Into<Owner>) -> Result<OwnerOutcome, SchedulerError> {
        let owner = owner.into();
        self.ask(|reply| Command::Wait { owner, reply }).await?
    }

    /// Drops the work only `owner` needs; see the module documentation.
    pub async fn cancel(&self, owner: impl Into<Owner>) -> Result<(), SchedulerError> {
        let owner = owner.into();
        self.ask(|reply| Command::Cancel { owner, reply }).await?
    }

    /// Cancels one derivation that is not final yet (queued, waiting for a retry or building: a running
    /// build is killed), recording `reason`; its dependents become `Blocked` on it. Answers once that is
    /// persisted.
    pub async fn cancel_drv(&self, drv: &str, reason: &str) -> Result<(), SchedulerError> {
        let (drv, reason) = (drv.to_string(), reason.to_string());
        self.ask(|reply| Command::CancelDrv { drv, reason, reply }).await?
    }

    /// Moves a derivation in a final state back to `Queued` (attempt numbering continues). Returns the owner
    /// of the rebuild ([`Owner::Rebuild`]), to [`SchedulerHandle::wait`] on: it completes when the derivation
    /// and the dependents its success requeues are final.
    pub async fn rebuild(&self, drv: &str) -> Result<Owner, SchedulerError> {
        self.ask(|reply| Command::Rebuild { drv: drv.to_string(), reply }).await?
    }

    /// The state, attempts and history of a derivation; `None` if it never had a state.
    pub async fn state(&self, drv: &str) -> Result<Option<DrvStatus>, SchedulerError> {
        self.ask(|reply| Command::State { drv: drv.to_string(), reply }).await?
    }

    /// The builds running now.
    pub async fn active(&self) -> Result<Vec<ActiveBuild>, SchedulerError> {
        self.ask(|reply| Command::Active { reply }).await
    }

    /// Pending work per platform.
    pub async fn depths(&self) -> Result<Vec<QueueDepth>, SchedulerError> {
        self.ask(|reply| Command::Depths { reply }).await
    }

    /// Every builder with its health and the builds running on it, in pool order.
    pub async fn builders(&self) -> Result<Vec<super::health::BuilderStatus>, SchedulerError> {
        self.ask(|reply| Command::Builders { reply }).await
    }

    /// The derivations waiting because every builder that may take them is down, with the reason
    /// (see [`DrvStatus::waiting`]).
    pub async fn waiting(&self) -> Result<Vec<(String, String)>, SchedulerError> {
        self.ask(|reply| Command::Waiting { reply }).await
    }

    /// Stops starting batches (for an orderly stop): running batches go on, and [`SchedulerHandle::active`]
    /// shows what still builds. Requests are still accepted and persisted; they build after the next start.
    pub async fn drain(&self) -> Result<(), SchedulerError> {
        self.ask(|reply| Command::Drain { reply }).await
    }

    /// Commits pending transitions, kills running batches (waiting, bounded, for the Nix children to exit)
    /// and stops the loop. Derivations left `Building` are resumed at the next start as after a crash.
    pub async fn shutdown(&self) -> Result<(), SchedulerError> {
        self.ask(|reply| Command::Shutdown { reply }).await
    }
}
