//! A profile of the AWS shared credentials file: `$AWS_SHARED_CREDENTIALS_FILE`, else
//! `$HOME/.aws/credentials`, an INI file of `[profile-name]` sections with `aws_access_key_id`,
//! `aws_secret_access_key` and optionally `aws_session_token` (`key = value` lines; `#` and `;` start
//! comments; indented lines continue a nested setting and are skipped). Nothing is requested over the
//! network. Errors name the file, the profile and the missing key, never a value.

use std::path::PathBuf;

use super::aws::AwsCredentials;
use super::{Ctx, Problem};
use crate::secret::Secret;

/// What the shared credentials file says about a profile.
pub enum Lookup {
    Found(AwsCredentials),
    /// The file exists but has no such section.
    NoProfile(PathBuf),
    /// No file (its path, or `None` when neither variable gives one).
    NoFile(Option<PathBuf>),
}

/// The shared credentials file's path.
pub fn credentials_file(ctx: &Ctx) -> Option<PathBuf> {
    match ctx.var("AWS_SHARED_CREDENTIALS_FILE") {
        Some(p) => Some(PathBuf::from(p.trim())),
        None => ctx.home_file(".aws/credentials"),
    }
}

/// Looks `profile` up; a section that exists but lacks a key is an error.
pub fn lookup(profile: &str, ctx: &Ctx) -> Result<Lookup, Problem> {
    let Some(path) = credentials_file(ctx) else { return Ok(Lookup::NoFile(None)) };
    let Some(text) = super::read_optional(&path)? else { return Ok(Lookup::NoFile(Some(path))) };
    match parse(&text, profile) {
        Ok(Some(creds)) => Ok(Lookup::Found(creds)),
        Ok(None) => Ok(Lookup::NoProfile(path)),
        Err(what) => Err(Problem::File { path, what }),
    }
}

/// The credentials of `profile` (the `aws-profile` source).
pub fn fetch(profile: &str, ctx: &Ctx) -> Result<AwsCredentials, Problem> {
    match lookup(profile.trim(), ctx)? {
        Lookup::Found(creds) => Ok(creds),
        Lookup::NoProfile(path) => {
            Err(Problem::File { path, what: format!("no profile [{}]", profile.trim()) })
        }
        Lookup::NoFile(Some(path)) => Err(Problem::File {
            path,
            what: "does not exist (set AWS_SHARED_CREDENTIALS_FILE to use another file)".into(),
        }),
        Lookup::NoFile(None) => Err(Problem::Config(
            "no AWS shared credentials file: neither AWS_SHARED_CREDENTIALS_FILE nor HOME is set".into(),
        )),
    }
}

/// The credentials of section `[profile]` in `text`, `None` when there is no such section. Repeated
/// sections are merged, a later key replacing an earlier one (as the AWS CLI reads them).
pub fn parse(text: &str, profile: &str) -> Result<Option<AwsCredentials>, String> {
    let mut in_profile = false;
    let mut seen = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for (no, raw) in text.lines().enumerate() {
        if raw.starts_with([' ', '\t']) && !raw.trim().is_empty() {
            continue; // a nested setting's continuation
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(section) = line.strip_prefix('[') {
            let Some(name) = section.split(']').next().filter(|_| section.contains(']')) else {
                return Err(format!("line {}: a section header without `]`", no + 1));
            };
            in_profile = name.trim() == profile;
            seen |= in_profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {} of profile [{profile}] is not `key = value`", no + 1));
        };
        let value = Some(value.trim().to_string()).filter(|v| !v.is_empty());
        match key.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => id = value,
            "aws_secret_access_key" => secret = value,
            "aws_session_token" | "aws_security_token" => token = value,
            _ => {}
        }
    }
    if !seen {
        return Ok(None);
    }
    let missing = |key: &str| format!("profile [{profile}] has no {key}");
    Ok(Some(AwsCredentials {
        access_key_id: Secret::new(id.ok_or_else(|| missing("aws_access_key_id"))?),
        secret_access_key: Secret::new(secret.ok_or_else(|| missing("aws_secret_access_key"))?),
        session_token: token.map(Secret::new),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# a comment
[default]
aws_access_key_id = AKIADEFAULT
aws_secret_access_key = default-secret

[eka-ci-production]
; another comment
aws_access_key_id=AKIAIOSFODNN7EXAMPLE
aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY
region = us-west-2
s3 =
  max_concurrent_requests = 20
[temp]
aws_access_key_id = ASIATEMP
aws_secret_access_key = temp-secret
aws_session_token = temp-token
[broken]
aws_access_key_id = AKIABROKEN
";

    #[test]
    fn profiles_are_found_by_name() {
        let c = parse(FILE, "eka-ci-production").unwrap().unwrap();
        assert_eq!(c.access_key_id.expose(), "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(c.secret_access_key.expose(), "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
        assert!(c.session_token.is_none());
        let t = parse(FILE, "temp").unwrap().unwrap();
        assert_eq!(t.session_token.unwrap().expose(), "temp-token");
        assert_eq!(parse(FILE, "default").unwrap().unwrap().access_key_id.expose(), "AKIADEFAULT");
        assert!(parse(FILE, "nope").unwrap().is_none());
    }

    #[test]
    fn a_missing_key_is_named_and_values_are_not_shown() {
        let err = parse(FILE, "broken").unwrap_err();
        assert_eq!(err, "profile [broken] has no aws_secret_access_key");
        let err = parse("[p]\nthis-is-a-secret-line\n", "p").unwrap_err();
        assert!(!err.contains("secret-line"), "{err}");
    }

    #[test]
    fn the_file_comes_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(&path, FILE).unwrap();
        let ctx = Ctx::default().with_var("AWS_SHARED_CREDENTIALS_FILE", path.to_str().unwrap());
        assert_eq!(fetch("temp", &ctx).unwrap().access_key_id.expose(), "ASIATEMP");
        let err = fetch("absent", &ctx).unwrap_err().to_string();
        assert!(err.contains("no profile [absent]") && err.contains("creds"), "{err}");
        let home = Ctx::default().with_var("HOME", dir.path().to_str().unwrap());
        let err = fetch("default", &home).unwrap_err().to_string();
        assert!(err.contains(".aws/credentials") && err.contains("does not exist"), "{err}");
    }
}
