//! The server side of the control socket: binding it safely and serving connections.
//!
//! Owns the socket file's life: a lock file next to it so a second server is refused, replacing a stale
//! socket left by a killed server, mode 0600, and removal at shutdown. Each connection is served on its
//! own task; a bad frame ends that connection with an error response, never the server.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use smol::net::unix::{UnixListener, UnixStream};

use super::{read_frame, write_frame, FrameError, Request, Response, MAX_REQUEST_FRAME};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot create directory {path} for the control socket: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("another eka-ci-server is already serving the control socket {path}")]
    InUse { path: PathBuf },
    #[error("cannot bind the control socket {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
}

/// A bound control socket. Dropping it does not remove the file: call [`ControlSocket::remove`].
pub struct ControlSocket {
    pub listener: UnixListener,
    path: PathBuf,
    lock_path: PathBuf,
    // Held for the life of the server: the flock is released when this file is closed.
    _lock: std::fs::File,
}

impl ControlSocket {
    /// Binds `path`: takes an exclusive lock on `path.lock`, refuses when another live server holds it,
    /// replaces a stale socket file, and creates the socket with mode 0600.
    pub fn bind(path: &Path) -> Result<ControlSocket, SocketError> {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| SocketError::Dir { path: dir.into(), source: e })?;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            }
        }
        let lock_path = lock_path_for(path);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| SocketError::Lock { path: lock_path.clone(), source: e })?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(SocketError::InUse { path: path.into() }),
            Err(e) => return Err(SocketError::Lock { path: lock_path, source: e.into() }),
        }
        // We hold the lock, so any socket file left here belongs to a dead server. Still, never unlink
        // something that answers.
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse { path: path.into() });
            }
            tracing::warn!(socket = %path.display(), "replacing stale control socket");
            std::fs::remove_file(path).map_err(|e| SocketError::Bind { path: path.into(), source: e })?;
        }
        // Create the socket with no group/other access from the first instant.
        let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
        let bound = std::os::unix::net::UnixListener::bind(path);
        rustix::process::umask(old);
        let std_listener = bound.map_err(|e| SocketError::Bind { path: path.into(), source: e })?;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        let listener = UnixListener::try_from(std_listener)
            .map_err(|e| SocketError::Bind { path: path.into(), source: e })?;
        Ok(ControlSocket { listener, path: path.into(), lock_path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file and its lock file (at shutdown).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

enum Step {
    Done(Response),
    Frame(Response),
    Idle,
}

fn lock_path_for(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Executes one request. The daemon implements it; the protocol knows nothing of what requests do.
/// Non-final frames sent through `frames` ([`Response::Progress`], [`Response::LogData`]) reach the
/// client, in order, before the final response. The channel is small: senders that must not lose data
/// await `send`; progress uses `try_send` and is dropped when the client reads slowly.
pub trait Handler: 'static {
    fn handle(
        &self,
        request: Request,
        frames: async_channel::Sender<Response>,
    ) -> impl std::future::Future<Output = Response>;
}

/// Serves one connection until the client closes it or sends a bad frame.
pub async fn serve_connection<H: Handler>(mut stream: UnixStream, handler: Arc<H>) {
    loop {
        let request: Request = match read_frame(&mut stream, MAX_REQUEST_FRAME).await {
            Ok(r) => r,
            Err(FrameError::Closed) => return,
            // A client that hangs up mid-frame is a disconnect, not a bad frame.
            Err(FrameError::Io(e)) => {
                tracing::debug!(error = %e, "control client disconnected mid-frame");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "rejecting control frame; closing connection");
                crate::metrics::global().control_frames_rejected.inc();
                let _ = write_frame(&mut stream, &Response::Error { message: e.to_string() }).await;
                return;
            }
        };
        let (frames_tx, frames_rx) = async_channel::bounded::<Response>(16);
        let mut handling = std::pin::pin!(handler.handle(request, frames_tx));
        let response = loop {
            let next = futures_lite::future::or(async { Step::Done((&mut handling).await) }, async {
                frames_rx.recv().await.map(Step::Frame).unwrap_or(Step::Idle)
            });
            match next.await {
                Step::Done(response) => break response,
                Step::Frame(frame) => {
                    if let Err(e) = write_frame(&mut stream, &frame).await {
                        // The client is gone; the request itself still runs to completion (its results
                        // are stored), but nobody is left to answer.
                        tracing::debug!(error = %e, "control client went away during a request");
                        let _ = handling.await;
                        return;
                    }
                }
                // All frame senders dropped before the response: just wait for it.
                Step::Idle => break handling.await,
            }
        };
        // Frames sent just before the response was ready still go first.
        while let Ok(frame) = frames_rx.try_recv() {
            if write_frame(&mut stream, &frame).await.is_err() {
                return;
            }
        }
        if let Err(e) = write_frame(&mut stream, &response).await {
            tracing::debug!(error = %e, "control client went away");
            return;
        }
    }
}
