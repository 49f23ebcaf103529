//! The client side of the control socket, used by the `ekaci` CLI.

use std::path::{Path, PathBuf};

use smol::net::unix::UnixStream;

use super::{read_frame, write_frame, FrameError, Progress, Request, Response, MAX_RESPONSE_FRAME};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to eka-ci-server at {path}: {source} (is the server running?)")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("control connection to {path} failed: {source}")]
    Frame { path: PathBuf, source: FrameError },
}

/// A connection to the server's control socket.
pub struct Client {
    stream: UnixStream,
    path: PathBuf,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| ClientError::Connect { path: path.into(), source: e })?;
        Ok(Client { stream, path: path.into() })
    }

    /// Sends one request and waits for its final response, ignoring progress.
    pub async fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        self.call_with_progress(request, |_| {}).await
    }

    /// Sends one request, hands every progress frame to `on_progress`, and returns the final response.
    pub async fn call_with_progress(
        &mut self,
        request: &Request,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<Response, ClientError> {
        self.call_streaming(request, |frame| {
            if let Response::Progress(p) = frame {
                on_progress(p)
            }
        })
        .await
    }

    /// Sends one request, hands every non-final frame to `on_frame`, and returns the final response.
    pub async fn call_streaming(
        &mut self,
        request: &Request,
        mut on_frame: impl FnMut(&Response),
    ) -> Result<Response, ClientError> {
        write_frame(&mut self.stream, request)
            .await
            .map_err(|e| ClientError::Frame { path: self.path.clone(), source: e })?;
        loop {
            let response: Response = read_frame(&mut self.stream, MAX_RESPONSE_FRAME)
                .await
                .map_err(|e| ClientError::Frame { path: self.path.clone(), source: e })?;
            if response.is_final() {
                return Ok(response);
            }
            on_frame(&response);
        }
    }
}
