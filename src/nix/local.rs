//! What the local Nix says about the machine it runs on: its systems (`system` and `extra-platforms`),
//! its `system-features` and whether its builds are sandboxed (`sandbox`), from `nix show-config --json`. The scheduler builds its local builder
//! from this; it lives here because only the `nix` module runs Nix.

/// What the local Nix says about the local machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNix {
    /// `system` followed by `extra-platforms`.
    pub systems: Vec<String>,
    pub features: Vec<String>,
    /// Nix's `sandbox` setting.
    pub sandbox: Sandbox,
}

/// Nix's `sandbox` setting, as the local Nix reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Sandbox {
    /// `sandbox = true`: every build runs isolated.
    On,
    /// `sandbox = relaxed`: derivations with `__noChroot = true` (and fixed-output ones) run outside
    /// the sandbox, which a pull request controls, so this counts as off for untrusted code.
    Relaxed,
    /// `sandbox = false`.
    Off,
}

impl Sandbox {
    /// The setting's value as Nix spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Sandbox::On => "true",
            Sandbox::Relaxed => "relaxed",
            Sandbox::Off => "false",
        }
    }

    /// Whether every build a pull request can ask for is isolated from the host.
    pub fn isolates_every_build(self) -> bool {
        self == Sandbox::On
    }
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
    let sandbox = match v.get("sandbox").and_then(|k| k.get("value")) {
        Some(serde_json::Value::Bool(true)) => Sandbox::On,
        Some(serde_json::Value::Bool(false)) => Sandbox::Off,
        Some(serde_json::Value::String(s)) if s == "relaxed" => Sandbox::Relaxed,
        Some(serde_json::Value::String(s)) if s == "true" => Sandbox::On,
        Some(serde_json::Value::String(s)) if s == "false" => Sandbox::Off,
        // Unknown or missing: assume the worst, so the start-up check errs on the safe side.
        _ => Sandbox::Off,
    };
    Ok(LocalNix { systems, features: strings("system-features"), sandbox })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sandbox_setting() {
        let config = |sandbox: &str| {
            format!(r#"{{"system":{{"value":"x86_64-linux"}},"sandbox":{{"value":{sandbox}}}}}"#)
        };
        let parse = |sandbox: &str| parse_show_config(&config(sandbox)).map(|l| l.sandbox).ok();
        assert_eq!(parse("true"), Some(Sandbox::On));
        assert_eq!(parse("false"), Some(Sandbox::Off));
        assert_eq!(parse(r#""relaxed""#), Some(Sandbox::Relaxed));
        assert_eq!(parse(r#""surprise""#), Some(Sandbox::Off));
        let missing = parse_show_config(r#"{"system":{"value":"x86_64-linux"}}"#).map(|l| l.sandbox).ok();
        assert_eq!(missing, Some(Sandbox::Off));
        assert!(Sandbox::On.isolates_every_build());
        assert!(!Sandbox::Relaxed.isolates_every_build());
    }
}
