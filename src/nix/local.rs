//! What the local Nix says about the machine it runs on: its systems (`system` and `extra-platforms`)
//! and its `system-features`, from `nix show-config --json`. The scheduler builds its local builder
//! from this; it lives here because only the `nix` module runs Nix.

/// What the local Nix says about the local machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNix {
    /// `system` followed by `extra-platforms`.
    pub systems: Vec<String>,
    pub features: Vec<String>,
}

/// Errors of [`detect_local`].
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(transparent)]
    Process(#[from] crate::nix::process::ProcessError),
    #[error("`nix show-config --json` failed: {0}")]
    Failed(String),
    #[error("cannot read the output of `nix show-config --json`: {0}")]
    Parse(String),
}

/// Parses `nix show-config --json`.
pub fn parse_show_config(json: &str) -> Result<LocalNix, DetectError> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| DetectError::Parse(e.to_string()))?;
    let strings = |key: &str| -> Vec<String> {
        match v.get(key).and_then(|k| k.get("value")) {
            Some(serde_json::Value::Array(a)) => {
                a.iter().filter_map(|s| s.as_str()).map(String::from).collect()
            }
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(String::from).collect(),
            _ => Vec::new(),
        }
    };
    let mut systems = strings("system");
    if systems.is_empty() {
        return Err(DetectError::Parse("no `system` setting".into()));
    }
    for p in strings("extra-platforms") {
        if !systems.contains(&p) {
            systems.push(p);
        }
    }
    Ok(LocalNix { systems, features: strings("system-features") })
}

/// Asks the local Nix for its systems and system features (`nix show-config --json`).
pub async fn detect_local() -> Result<LocalNix, DetectError> {
    let mut cmd = std::process::Command::new("nix");
    cmd.args(["--extra-experimental-features", "nix-command", "show-config", "--json"]);
    let limits = crate::nix::process::RunLimits {
        timeout: Some(std::time::Duration::from_secs(30)),
        ..Default::default()
    };
    let out = crate::nix::process::run_captured(cmd, &limits).await?;
    if !out.termination.success() {
        return Err(DetectError::Failed(crate::text::bounded_output(&out.stderr, 2000)));
    }
    parse_show_config(&String::from_utf8_lossy(&out.stdout))
}
