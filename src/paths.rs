//! Default locations of eka-ci's files, following the XDG base directory specification.
//!
//! Every function here only computes paths from the environment; nothing is created. A value set in
//! `ekaci.toml` always wins over these defaults (the config module decides that).

use std::path::PathBuf;

/// Reads an environment variable the XDG way: unset and empty both mean "not set".
fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from).filter(|p| p.is_absolute())
}

fn home() -> PathBuf {
    env_path("HOME").unwrap_or_else(|| PathBuf::from("/"))
}

/// `$XDG_CONFIG_HOME`, default `~/.config`.
pub fn config_home() -> PathBuf {
    env_path("XDG_CONFIG_HOME").unwrap_or_else(|| home().join(".config"))
}

/// `$XDG_DATA_HOME`, default `~/.local/share`.
pub fn data_home() -> PathBuf {
    env_path("XDG_DATA_HOME").unwrap_or_else(|| home().join(".local/share"))
}

/// `$XDG_RUNTIME_DIR`, falling back to a per-user directory under the data dir when it is unset
/// (as under `su` or in containers), so the server still has somewhere private to put its socket.
pub fn runtime_dir() -> PathBuf {
    env_path("XDG_RUNTIME_DIR").unwrap_or_else(|| data_home().join("ekaci").join("run"))
}

/// Default server configuration file: `$XDG_CONFIG_HOME/ekaci/ekaci.toml`.
pub fn default_config_file() -> PathBuf {
    config_home().join("ekaci").join("ekaci.toml")
}

/// Default data directory: `$XDG_DATA_HOME/ekaci`.
pub fn default_data_dir() -> PathBuf {
    data_home().join("ekaci")
}

/// Default redb database: `$XDG_DATA_HOME/ekaci/ekaci.redb`.
pub fn default_db_path() -> PathBuf {
    default_data_dir().join("ekaci.redb")
}

/// Default build log directory: `$XDG_DATA_HOME/ekaci/build-logs`.
pub fn default_logs_dir() -> PathBuf {
    default_data_dir().join("build-logs")
}

/// Default control socket: `$XDG_RUNTIME_DIR/ekaci.socket`.
pub fn default_socket_path() -> PathBuf {
    runtime_dir().join("ekaci.socket")
}
