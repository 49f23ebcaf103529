//! Paths inside the checkout: the shape of a repository-relative path, and resolving one inside the
//! canonical checkout one component at a time.
//!
//! Symbolic links are followed only while they stay inside the checkout: a target outside it is
//! refused without being looked at, so the answer cannot be used to probe the server's filesystem.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// The longest repository-relative path (and bind-mount path) accepted, in bytes.
pub(super) const MAX_REL_PATH_BYTES: usize = 4096;
const MAX_SYMLINK_HOPS: usize = 40;

/// Checks the shape of a repository-relative path and normalises away `.` components.
pub(super) fn relative_repo_path(s: &str) -> Result<PathBuf, &'static str> {
    if s.is_empty() {
        return Err("must not be empty");
    }
    if s.len() > MAX_REL_PATH_BYTES {
        return Err("path is too long");
    }
    if s.contains('\0') {
        return Err("must not contain NUL characters");
    }
    let mut rel = PathBuf::new();
    for component in Path::new(s).components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("must not contain \"..\" components"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("must be a path relative to the repository root, not an absolute path")
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err("must name a file inside the repository");
    }
    Ok(rel)
}

#[derive(Debug)]
pub(super) enum ResolveError {
    NotFound,
    Escapes,
    TooManyLinks,
    Io(io::ErrorKind),
}

impl ResolveError {
    pub(super) fn message_for_file(&self) -> String {
        match self {
            ResolveError::NotFound => "does not exist in the repository".into(),
            ResolveError::Escapes => {
                "resolves (through a symbolic link) to a location outside the repository".into()
            }
            ResolveError::TooManyLinks => "has too many levels of symbolic links".into(),
            ResolveError::Io(kind) => format!("cannot be read ({kind})"),
        }
    }

    pub(super) fn message(&self) -> String {
        format!("the configuration file {}", self.message_for_file())
    }
}

fn io_error(e: io::Error) -> ResolveError {
    const ENOTDIR: i32 = 20;
    if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(ENOTDIR) {
        ResolveError::NotFound
    } else {
        ResolveError::Io(e.kind())
    }
}

enum Step {
    Parent,
    Name(OsString),
}

fn push_steps(pending: &mut Vec<Step>, path: &Path) {
    // `pending` is a stack: push in reverse so the first component is popped first.
    for component in path.components().rev() {
        match component {
            Component::Normal(name) => pending.push(Step::Name(name.to_os_string())),
            Component::ParentDir => pending.push(Step::Parent),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
}

/// Resolves `rel` inside the canonical directory `root`, following symlinks one component at a time
/// and refusing (without looking at it) any target outside `root`. Returns the resolved path, which
/// contains no symlinks, and its metadata.
pub(super) fn resolve_in_repo(root: &Path, rel: &Path) -> Result<(PathBuf, fs::Metadata), ResolveError> {
    if rel.components().any(|c| matches!(c, Component::RootDir | Component::Prefix(_))) {
        return Err(ResolveError::Escapes);
    }
    let mut pending = Vec::new();
    push_steps(&mut pending, rel);
    let mut current = root.to_path_buf();
    let mut depth = 0usize;
    let mut hops = 0usize;
    let mut last: Option<fs::Metadata> = None;

    while let Some(step) = pending.pop() {
        match step {
            Step::Parent => {
                if depth == 0 {
                    return Err(ResolveError::Escapes);
                }
                current.pop();
                depth -= 1;
                last = None;
            }
            Step::Name(name) => {
                let candidate = current.join(&name);
                let meta = fs::symlink_metadata(&candidate).map_err(io_error)?;
                if meta.file_type().is_symlink() {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(ResolveError::TooManyLinks);
                    }
                    let target = fs::read_link(&candidate).map_err(io_error)?;
                    if target.is_absolute() {
                        let Ok(inside) = target.strip_prefix(root) else {
                            return Err(ResolveError::Escapes);
                        };
                        current = root.to_path_buf();
                        depth = 0;
                        push_steps(&mut pending, inside);
                    } else {
                        push_steps(&mut pending, &target);
                    }
                    last = None;
                } else {
                    if !pending.is_empty() && !meta.is_dir() {
                        return Err(ResolveError::NotFound);
                    }
                    current.push(&name);
                    depth += 1;
                    last = Some(meta);
                }
            }
        }
    }

    let meta = match last {
        Some(meta) => meta,
        None => fs::metadata(&current).map_err(io_error)?,
    };
    // Belt and braces: the kernel's view of the resolved path must agree.
    match fs::canonicalize(&current) {
        Ok(canonical) if canonical.starts_with(root) => Ok((current, meta)),
        Ok(_) => Err(ResolveError::Escapes),
        Err(e) => Err(io_error(e)),
    }
}
