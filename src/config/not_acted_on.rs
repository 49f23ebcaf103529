//! Keys that are accepted, validated and documented but that no code acts on yet: the one list, for
//! the server configuration ([`SERVER`]) and the repository configuration ([`REPO`]).
//!
//! The server warns at start-up (and `eka-ci-server --check-config` prints) one line per listed key
//! the loaded configuration uses; the repository validator adds a [`FieldError`](super::repo::FieldError)
//! warning per listed key the repository uses. Every line is `KEY: accepted, not yet acted on: NOTE`
//! and never contains a value (some of these keys hold secrets). The user documentation marks each
//! listed key with the same [`PHRASE`]; a test keeps the list and the documentation in agreement.
//!
//! When a key starts being acted on, remove it here and its mark in the documentation.

use super::ServerConfig;

/// The phrase warnings and the documentation use for these keys.
pub const PHRASE: &str = "accepted, not yet acted on";

/// A server configuration key (or table) that is accepted but not acted on.
#[derive(Debug)]
pub struct ServerKey {
    /// The dotted key path, as `ekaci.toml` spells it (`web.bundle_path`, `caches`).
    pub key: &'static str,
    /// What the key will do once it is acted on, or what does not happen yet.
    pub note: &'static str,
    /// Whether the loaded values set it (a value other than the default; environment variables such as
    /// `JWT_SECRET` or `GITEA_TOKEN` set keys too). A key written in the file counts as used even with
    /// its default value.
    pub set: fn(&ServerConfig) -> bool,
}

/// A repository configuration field that is accepted but not acted on.
#[derive(Debug)]
pub struct RepoKey {
    /// The field path; `<name>` stands for a job or check name (`jobs.<name>.caches`).
    pub key: &'static str,
    /// What the field will do once it is acted on, or what does not happen yet.
    pub note: &'static str,
}

impl ServerKey {
    /// `KEY: accepted, not yet acted on: NOTE`.
    pub fn warning(&self) -> String {
        format!("{}: {PHRASE}: {}", self.key, self.note)
    }
}

impl RepoKey {
    /// The message of the warning (its path is the field path where the key was found).
    pub fn message(&self) -> String {
        format!("{PHRASE}: {}", self.note)
    }
}

/// Server configuration keys accepted but not acted on, in the order warnings list them.
pub const SERVER: &[ServerKey] = &[
    ServerKey {
        key: "web.allowed_origins",
        note: "no CORS headers are sent yet",
        set: |c| !c.web.allowed_origins.is_empty(),
    },
    ServerKey {
        key: "web.bundle_path",
        note: "no web UI bundle is served yet",
        set: |c| c.web.bundle_path.is_some(),
    },
    ServerKey {
        key: "gitea_instances",
        note: "Gitea is not supported yet",
        set: |c| !c.gitea_instances.is_empty(),
    },
    ServerKey {
        key: "gitlab_instances",
        note: "GitLab is not supported yet",
        set: |c| !c.gitlab_instances.is_empty(),
    },
];

/// Repository configuration fields accepted but not acted on.
pub const REPO: &[RepoKey] = &[];

/// The listed server keys `config` uses: those in `written` (found in the file) and those whose value
/// is set, in the order of [`SERVER`].
pub fn server_keys_in_use(config: &ServerConfig, written: &[&'static ServerKey]) -> Vec<&'static ServerKey> {
    SERVER.iter().filter(|k| written.iter().any(|w| w.key == k.key) || (k.set)(config)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of `doc` that carry the phrase, outside fenced code blocks (examples of output).
    fn marked_lines(doc: &str) -> Vec<&str> {
        let mut in_code = false;
        let mut out = Vec::new();
        for line in doc.lines() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
            } else if !in_code && line.contains(PHRASE) {
                out.push(line);
            }
        }
        out
    }

    fn read(path: &str) -> String {
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// How a key is named where it is described: its last segment that is not `<name>`
    /// (`web.bundle_path` → `bundle_path`, `jobs.<name>.caches` → `caches`, `checks.<name>` → `checks`).
    fn leaf(key: &str) -> &str {
        key.rsplit('.').find(|s| *s != "<name>").unwrap_or(key)
    }

    /// Every listed key appears in the documentation's list, on a line `KEY`: PHRASE: …, and every
    /// line carrying the phrase names a listed key (in full, or by its leaf where the key is described).
    #[test]
    fn the_list_matches_the_documentation() {
        let server: Vec<&str> = SERVER.iter().map(|k| k.key).collect();
        let repo: Vec<&str> = REPO.iter().map(|k| k.key).collect();
        for (path, keys) in [("docs/configuration.md", &server), ("docs/repository-config.md", &repo)] {
            let doc = read(path);
            let lines = marked_lines(&doc);
            for key in keys {
                let want = format!("`{key}`: {PHRASE}: ");
                assert!(lines.iter().any(|l| l.contains(&want)), "{path}: no line with {want:?}");
                let leaf = format!("`{}`", leaf(key));
                assert!(
                    lines.iter().any(|l| l.contains(&leaf) && !l.contains(&want)),
                    "{path}: where {key} is described, no line names {leaf} with \"{PHRASE}\""
                );
            }
            for line in &lines {
                assert!(
                    keys.iter().any(|k| line.contains(&format!("`{k}`")) || line.contains(&format!("`{}`", leaf(k)))),
                    "{path}: a line marks no listed key: {line}"
                );
            }
        }
        // The example file marks each server key in a comment: `# KEY: accepted, not yet acted on: …`.
        let example = read("docs/ekaci.example.toml");
        let lines = marked_lines(&example);
        for key in &server {
            let want = format!("# {key}: {PHRASE}");
            assert!(lines.iter().any(|l| l.starts_with(&want)), "docs/ekaci.example.toml: no `{want}` line");
        }
        assert_eq!(lines.len(), server.len(), "docs/ekaci.example.toml: {lines:#?}");
    }

    #[test]
    fn warnings_name_the_key_and_the_phrase() {
        assert_eq!(
            SERVER.iter().find(|k| k.key == "gitea_instances").map(ServerKey::warning).as_deref(),
            Some("gitea_instances: accepted, not yet acted on: Gitea is not supported yet")
        );
        let key = RepoKey { key: "jobs.<name>.x", note: "nothing happens yet" };
        assert_eq!(key.message(), "accepted, not yet acted on: nothing happens yet");
        let mut keys: Vec<&str> = SERVER.iter().map(|k| k.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), SERVER.len(), "a server key is listed twice");
    }

    #[test]
    fn defaults_use_no_listed_key_and_set_values_do() {
        let mut config = ServerConfig::default();
        assert!(server_keys_in_use(&config, &[]).is_empty());
        config.web.bundle_path = Some("/srv/ui".into());
        let used: Vec<&str> = server_keys_in_use(&config, &[]).iter().map(|k| k.key).collect();
        assert_eq!(used, ["web.bundle_path"]);
        let written = [&SERVER[0]];
        let used: Vec<&str> = server_keys_in_use(&config, &written).iter().map(|k| k.key).collect();
        assert_eq!(used, ["web.allowed_origins", "web.bundle_path"]);
    }
}
