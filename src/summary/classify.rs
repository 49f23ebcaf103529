//! Classifies one attribute's change from the base and head derivations and their `meta`: Added, Removed,
//! VersionBump, LicenseChange, MaintainerChange, RebuildOnly.
//!
//! `meta` comes from the repository under test and is untrusted: any shape is accepted, fields of the wrong
//! type are treated as absent, and nothing here panics or allocates without bound beyond the input. This
//! file must never read the store or the graph, and never render text.

use serde_json::Value;

use super::{PackageChange, PackageChangeKind};
use crate::jobset::AttrDrv;

/// Splits a derivation name the way Nix's `builtins.parseDrvName` does: the version starts after the first
/// `-` that is followed by a character that is not a letter; without one the version is empty.
pub fn parse_drv_name(name: &str) -> (&str, &str) {
    let bytes = name.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'-' && bytes.get(i + 1).is_some_and(|c| !c.is_ascii_alphabetic()) {
            return (&name[..i], &name[i + 1..]);
        }
    }
    (name, "")
}

/// What classification reads from one side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub pname: String,
    pub version: String,
    pub licenses: Vec<String>,
    pub maintainers: Vec<String>,
    /// Whether `meta` was present and a JSON object.
    pub available: bool,
}

impl Meta {
    /// Reads a derivation's name and `meta` (JSON text).
    pub fn of(drv: &AttrDrv) -> Meta {
        let meta: Option<Value> = drv.meta_json.as_deref().and_then(|t| serde_json::from_str(t).ok());
        let obj = meta.as_ref().and_then(Value::as_object);
        let (parsed_pname, parsed_version) = parse_drv_name(&drv.name);
        let text = |key: &str| obj.and_then(|o| o.get(key)).and_then(Value::as_str).map(str::to_string);
        let mut licenses = obj.and_then(|o| o.get("license")).map(licenses_of).unwrap_or_default();
        licenses.sort();
        licenses.dedup();
        let mut maintainers = obj.and_then(|o| o.get("maintainers")).map(maintainers_of).unwrap_or_default();
        maintainers.sort();
        maintainers.dedup();
        Meta {
            pname: text("pname").unwrap_or_else(|| parsed_pname.to_string()),
            version: text("version").unwrap_or_else(|| parsed_version.to_string()),
            licenses,
            maintainers,
            available: obj.is_some(),
        }
    }
}

/// `meta.license`: a string, an attribute set (spdxId, else shortName, else fullName), or a list of those.
fn licenses_of(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().filter_map(license_of).collect(),
        other => license_of(other).into_iter().collect(),
    }
}

fn license_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => ["spdxId", "shortName", "fullName"]
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_str))
            .map(str::to_string),
        _ => None,
    }
}

/// `meta.maintainers`: a list of attribute sets (github, else name, else email) or strings.
fn maintainers_of(v: &Value) -> Vec<String> {
    let one = |m: &Value| match m {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => ["github", "name", "email"]
            .iter()
            .find_map(|k| o.get(*k).and_then(Value::as_str))
            .map(str::to_string),
        _ => None,
    };
    match v {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

/// The change of one attribute; `None` when both sides are absent, or when the derivation is the same and
/// neither version, license nor maintainers changed (a metadata-only change of those is reported).
pub fn classify(attr: &str, base: Option<&AttrDrv>, head: Option<&AttrDrv>) -> Option<PackageChange> {
    let (b, h) = (base.map(Meta::of), head.map(Meta::of));
    let system = head.or(base).map(|d| d.system.clone())?;
    let mut kinds = Vec::new();
    match (base, head) {
        (None, None) => return None,
        (None, Some(_)) => kinds.push(PackageChangeKind::Added),
        (Some(_), None) => kinds.push(PackageChangeKind::Removed),
        (Some(bd), Some(hd)) => {
            if let (Some(b), Some(h)) = (&b, &h) {
                if !b.available && !h.available {
                    crate::metrics::global().change_summary_metadata_unavailable.inc();
                }
                if b.pname == h.pname && b.version != h.version {
                    kinds.push(PackageChangeKind::VersionBump);
                }
                if b.licenses != h.licenses {
                    kinds.push(PackageChangeKind::LicenseChange);
                }
                if b.maintainers != h.maintainers {
                    kinds.push(PackageChangeKind::MaintainerChange);
                }
            }
            if kinds.is_empty() {
                // The same derivation with no metadata change we report is no change at all.
                if bd.drv_path == hd.drv_path {
                    return None;
                }
                kinds.push(PackageChangeKind::RebuildOnly);
            }
        }
    }
    let (b, h) = (b.unwrap_or_default(), h.unwrap_or_default());
    let pname = if head.is_some() { h.pname.clone() } else { b.pname.clone() };
    Some(PackageChange {
        attr: attr.to_string(),
        system,
        kinds,
        pname: Some(pname).filter(|p| !p.is_empty()),
        base_version: base.map(|_| b.version.clone()).filter(|v| !v.is_empty()),
        head_version: head.map(|_| h.version.clone()).filter(|v| !v.is_empty()),
        base_license: b.licenses,
        head_license: h.licenses,
        base_maintainers: b.maintainers,
        head_maintainers: h.maintainers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drv(path: &str, name: &str, meta: Option<&str>) -> AttrDrv {
        AttrDrv {
            drv_path: path.into(),
            name: name.into(),
            system: "x86_64-linux".into(),
            outputs: vec![("out".into(), format!("/nix/store/{path}-out"))],
            meta_json: meta.map(str::to_string),
            required_system_features: vec![],
        }
    }

    #[test]
    fn drv_names_split_like_nix() {
        assert_eq!(parse_drv_name("hello-2.12.1"), ("hello", "2.12.1"));
        assert_eq!(parse_drv_name("nix-prefetch-git-1.0"), ("nix-prefetch-git", "1.0"));
        assert_eq!(parse_drv_name("gtk+-3-2"), ("gtk+", "3-2"));
        assert_eq!(parse_drv_name("foo"), ("foo", ""));
        assert_eq!(parse_drv_name("foo-"), ("foo-", ""));
        assert_eq!(parse_drv_name("python3.11-requests-2.31.0"), ("python3.11-requests", "2.31.0"));
        assert_eq!(parse_drv_name("ü-1"), ("ü", "1"));
    }

    #[test]
    fn kinds_combine_and_metadata_shapes_are_normalised() {
        let b = drv("a", "hello-1.0", Some(r#"{"license":"mit","maintainers":[{"github":"alice"}]}"#));
        let h = drv(
            "b",
            "hello-1.1",
            Some(r#"{"license":[{"spdxId":"MIT"},{"shortName":"gpl3"}],"maintainers":["alice"]}"#),
        );
        let c = classify("hello", Some(&b), Some(&h)).unwrap();
        assert_eq!(c.kinds, vec![PackageChangeKind::VersionBump, PackageChangeKind::LicenseChange]);
        assert_eq!(c.head_license, vec!["MIT".to_string(), "gpl3".to_string()]);
        assert_eq!((c.base_version.as_deref(), c.head_version.as_deref()), (Some("1.0"), Some("1.1")));

        let h2 =
            drv("c", "hello-1.0", Some(r#"{"license":"mit","maintainers":[{"name":"Bob"}],"junk":[1]}"#));
        let c = classify("hello", Some(&b), Some(&h2)).unwrap();
        assert_eq!(c.kinds, vec![PackageChangeKind::MaintainerChange]);

        let h3 = drv("d", "hello-1.0", Some(r#"{"license":"mit","maintainers":[{"github":"alice"}]}"#));
        assert_eq!(
            classify("hello", Some(&b), Some(&h3)).unwrap().kinds,
            vec![PackageChangeKind::RebuildOnly]
        );
        assert_eq!(classify("hello", Some(&b), Some(&b)), None);

        // A rename of the package is not a version bump.
        let h4 = drv("e", "hallo-2.0", Some("not json"));
        assert_eq!(classify("hello", Some(&b), Some(&h4)).unwrap().kinds.len(), 2);
        assert_eq!(classify("x", None, Some(&h)).unwrap().kinds, vec![PackageChangeKind::Added]);
        assert_eq!(classify("x", Some(&b), None).unwrap().kinds, vec![PackageChangeKind::Removed]);
    }
}
