//! Store paths: the ONE place that decides whether a string is a Nix store path (`<dir>/<hash>-<name>`)
//! or a derivation path, and cuts it into its parts. Pure string work: it never touches the filesystem
//! and never asks Nix.
//!
//! Three levels of acceptance exist, each for a reason, and every caller picks one here instead of
//! writing its own:
//!
//! * [`StorePath::parse`] / [`DrvPath::parse`] — strict: everything Nix itself would accept as a store
//!   path name. Used where a path reaches the filesystem or argv (log file names, `nix-store`
//!   arguments, the aggregate expression) or comes from outside (the HTTP API).
//! * [`split_default_store`] — the hash and the rest of a path in `/nix/store`, the name unchecked. Used
//!   by the graph's compact node form, which only needs a lossless split of whatever string it is given.
//! * [`looks_like_drv_path`] — absolute and ending in `.drv`. Used by graph discovery, which reads any
//!   `.drv` file it is pointed at (tests and other store directories included).

/// Nix's base-32 alphabet (no `e`, `o`, `u`, `t`), used by store path hashes.
pub const NIX_BASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
/// The default store directory, without a trailing slash.
pub const DEFAULT_STORE_DIR: &str = "/nix/store";
/// The length of a store path hash, in base-32 characters.
pub const HASH_LEN: usize = 32;
/// The longest store path name Nix accepts.
pub const MAX_NAME_LEN: usize = 211;

/// Why a string is not a store path (or not a derivation path). The texts ([`StorePathError::reason`])
/// are shown to API clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorePathError {
    NotAbsolute,
    NoStoreDir,
    DirNotNormalised,
    NoHash,
    HashNotBase32,
    BadName,
    ForbiddenChar,
    NotDrv,
}

impl StorePathError {
    /// The reason as a static text.
    pub fn reason(self) -> &'static str {
        match self {
            StorePathError::NotAbsolute => "not an absolute path",
            StorePathError::NoStoreDir => "not under an absolute store directory",
            StorePathError::DirNotNormalised => "the store directory is not normalised",
            StorePathError::NoHash => "no 32-character hash followed by '-'",
            StorePathError::HashNotBase32 => "the hash is not Nix base-32",
            StorePathError::BadName => "bad name length or leading dot",
            StorePathError::ForbiddenChar => "forbidden character in the name",
            StorePathError::NotDrv => "does not end in .drv",
        }
    }
}

impl std::fmt::Display for StorePathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for StorePathError {}

/// A well-formed store path `<dir>/<hash>-<name>`, borrowed from the string it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorePath<'a> {
    /// The store directory, without a trailing slash (normally [`DEFAULT_STORE_DIR`]).
    pub dir: &'a str,
    /// The 32-character base-32 hash.
    pub hash: &'a str,
    pub name: &'a str,
}

impl<'a> StorePath<'a> {
    /// Checks the shape of a store path: an absolute store directory without `.`/`..` components, a
    /// 32-char Nix base-32 hash, a dash, and a name of 1–211 characters from `[A-Za-z0-9+-._?=]` not
    /// starting with a dot. Any store directory is accepted, not only [`DEFAULT_STORE_DIR`].
    pub fn parse(path: &'a str) -> Result<StorePath<'a>, StorePathError> {
        let (dir, base) = path.rsplit_once('/').ok_or(StorePathError::NotAbsolute)?;
        if !dir.starts_with('/') || dir.len() < 2 {
            return Err(StorePathError::NoStoreDir);
        }
        if dir[1..].split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(StorePathError::DirNotNormalised);
        }
        let (hash, name) = split_base(base)?;
        if name.len() > MAX_NAME_LEN || name.starts_with('.') {
            return Err(StorePathError::BadName);
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b)) {
            return Err(StorePathError::ForbiddenChar);
        }
        Ok(StorePath { dir, hash, name })
    }
}

/// A well-formed derivation path: a [`StorePath`] whose name ends in `.drv` after at least one character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrvPath<'a> {
    path: StorePath<'a>,
}

impl<'a> DrvPath<'a> {
    /// Checks a `.drv` store path (see [`StorePath::parse`]).
    pub fn parse(path: &'a str) -> Result<DrvPath<'a>, StorePathError> {
        let path = StorePath::parse(path)?;
        match path.name.strip_suffix(".drv") {
            Some(stem) if !stem.is_empty() => Ok(DrvPath { path }),
            _ => Err(StorePathError::NotDrv),
        }
    }

    /// The parts of the store path.
    pub fn store_path(&self) -> StorePath<'a> {
        self.path
    }

    /// The 32-character base-32 hash.
    pub fn hash(&self) -> &'a str {
        self.path.hash
    }

    /// The name, `.drv` included.
    pub fn name(&self) -> &'a str {
        self.path.name
    }
}

/// Splits `<hash>-<name>`: a 32-character Nix base-32 hash, a dash and a non-empty rest, which is not
/// checked further. The one implementation of the hash rule, shared by every level of acceptance.
fn split_base(base: &str) -> Result<(&str, &str), StorePathError> {
    if base.len() < HASH_LEN + 2 || !base.is_char_boundary(HASH_LEN) || base.as_bytes()[HASH_LEN] != b'-' {
        return Err(StorePathError::NoHash);
    }
    let (hash, name) = (&base[..HASH_LEN], &base[HASH_LEN + 1..]);
    if !hash.bytes().all(|b| NIX_BASE32.contains(&b)) {
        return Err(StorePathError::HashNotBase32);
    }
    Ok((hash, name))
}

/// `(hash, rest)` of `/nix/store/<32 base-32 chars>-<non-empty rest>`, the rest unchecked (it may hold
/// any UTF-8, `/` included). Loose on purpose: for a lossless compact form of any string; never use it to
/// decide that a path is safe to open or pass to Nix.
pub fn split_default_store(path: &str) -> Option<(&str, &str)> {
    let base = path.strip_prefix(DEFAULT_STORE_DIR)?.strip_prefix('/')?;
    split_base(base).ok()
}

/// The base name after `/nix/store/`, if `path` starts with it (no other check).
pub fn strip_default_store(path: &str) -> Option<&str> {
    path.strip_prefix(DEFAULT_STORE_DIR)?.strip_prefix('/')
}

/// Whether `path` can name a derivation file: absolute, ending in `.drv`, no NUL. Loose on purpose (any
/// directory, any name): graph discovery reads whatever `.drv` file it is given and lets the reader fail.
pub fn looks_like_drv_path(path: &str) -> bool {
    path.starts_with('/') && path.ends_with(".drv") && !path.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "sc8gcp1n756q6050jdc7ij7nkpfbrf96";

    #[test]
    fn store_paths_are_checked() {
        let p =
            StorePath::parse("/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a-1.0+x_y?z=.drv").expect("valid");
        assert_eq!(p.dir, "/nix/store");
        assert_eq!(p.hash, "sc8gcp1n756q6050jdc7ij7nkpfbrf96");
        for bad in [
            "",
            "relative/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a.drv",
            "/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf9-a.drv",
            "/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96a.drv",
            "/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrfeu-a.drv", // 'e' and 'u' are not base-32
            "/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-",
            "/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-.hidden",
            "/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a/b.drv",
            "/nix/../etc/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a.drv",
            "/nix//store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a.drv",
            "/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a.drv",
            "/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a b.drv",
            "/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-é.drv",
        ] {
            assert!(StorePath::parse(bad).is_err() || DrvPath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(DrvPath::parse("/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a").is_err());
        assert!(DrvPath::parse("/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-.drv").is_err());
        let long = format!("/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-{}.drv", "a".repeat(208));
        assert!(DrvPath::parse(&long).is_err());
    }

    #[test]
    fn valid_paths_are_split() {
        let p =
            StorePath::parse("/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-a-1.0+x_y?z=.drv").expect("valid");
        assert_eq!(p.dir, "/nix/store");
        assert_eq!(p.hash, H);
        assert_eq!(p.name, "a-1.0+x_y?z=.drv");
        // Any normalised absolute store directory.
        let other = format!("/other/store/{H}-x");
        assert_eq!(StorePath::parse(&other).map(|p| p.dir), Ok("/other/store"));
        let d = DrvPath::parse("/nix/store/sc8gcp1n756q6050jdc7ij7nkpfbrf96-hello-2.12.drv").expect("drv");
        assert_eq!((d.hash(), d.name()), (H, "hello-2.12.drv"));
        let long = format!("/nix/store/{H}-{}", "a".repeat(MAX_NAME_LEN));
        assert!(StorePath::parse(&long).is_ok());
    }

    #[test]
    fn malformed_paths_are_refused_with_their_reason() {
        use StorePathError::*;
        for (bad, reason) in [
            (String::new(), NotAbsolute),
            (format!("relative/{H}-a.drv"), NoStoreDir),
            (format!("/{H}-a.drv"), NoStoreDir),
            (format!("/nix/../etc/{H}-a.drv"), DirNotNormalised),
            (format!("/nix//store/{H}-a.drv"), DirNotNormalised),
            (format!("/nix/./store/{H}-a.drv"), DirNotNormalised),
            // Wrong hash length or no dash.
            (format!("/nix/store/{}-a.drv", &H[..31]), NoHash),
            (format!("/nix/store/{H}a.drv"), NoHash),
            (format!("/nix/store/{H}-"), NoHash),
            (format!("/nix/store/{}é-a.drv", &H[..31]), NoHash),
            // 'e' and 'u' are not base-32; neither are capitals.
            (format!("/nix/store/{}eu-a.drv", &H[..30]), HashNotBase32),
            (format!("/nix/store/{}A-a.drv", &H[..31]), HashNotBase32),
            // Missing name, leading dot, too long.
            (format!("/nix/store/{H}-.hidden"), BadName),
            (format!("/nix/store/{H}-{}", "a".repeat(MAX_NAME_LEN + 1)), BadName),
            (format!("/nix/store/{H}-a b.drv"), ForbiddenChar),
            (format!("/nix/store/{H}-é.drv"), ForbiddenChar),
        ] {
            assert_eq!(StorePath::parse(&bad), Err(reason), "{bad:?}");
        }
        // A path inside a store path: its last component `b.drv` has no hash.
        assert_eq!(StorePath::parse(&format!("/nix/store/{H}-a/b.drv")), Err(NoHash));
    }

    #[test]
    fn drv_paths_need_the_suffix_and_a_stem() {
        assert_eq!(DrvPath::parse(&format!("/nix/store/{H}-a")), Err(StorePathError::NotDrv));
        assert_eq!(DrvPath::parse(&format!("/nix/store/{H}-.drv")), Err(StorePathError::BadName));
        assert_eq!(DrvPath::parse(&format!("/nix/store/{H}-a.drv.x")), Err(StorePathError::NotDrv));
        assert_eq!(DrvPath::parse("/nix/store/x.drv"), Err(StorePathError::NoHash));
        // 208 + ".drv" is over the name limit.
        let long = format!("/nix/store/{H}-{}.drv", "a".repeat(208));
        assert_eq!(DrvPath::parse(&long), Err(StorePathError::BadName));
        let ok = format!("/nix/store/{H}-a.drv");
        assert_eq!(DrvPath::parse(&ok).map(|d| d.store_path().name), Ok("a.drv"));
    }

    #[test]
    fn the_loose_split_checks_only_the_hash() {
        assert_eq!(split_default_store(&format!("/nix/store/{H}-hello")), Some((H, "hello")));
        // The name is not checked: unicode, a nested path, a trailing dash all split.
        assert_eq!(split_default_store(&format!("/nix/store/{H}-ünïcode")), Some((H, "ünïcode")));
        assert_eq!(split_default_store(&format!("/nix/store/{H}-a/b")), Some((H, "a/b")));
        assert_eq!(split_default_store(&format!("/nix/store/{H}-a-")), Some((H, "a-")));
        // But the prefix, the hash and a non-empty name are.
        for bad in [
            format!("/elsewhere/{H}-x"),
            format!("/nix/storex/{H}-x"),
            format!("/nix/store{H}-x"),
            format!("/nix/store/{H}-"),
            format!("/nix/store/{H}x"),
            format!("/nix/store/{}e-x", &H[..31]),
            "/nix/store/x".to_string(),
        ] {
            assert_eq!(split_default_store(&bad), None, "{bad}");
        }
        assert_eq!(strip_default_store(&format!("/nix/store/{H}-x")), Some(&*format!("{H}-x")));
        assert_eq!(strip_default_store("/nix/storex"), None);
    }

    #[test]
    fn drv_like_paths() {
        assert!(looks_like_drv_path("/nix/store/x.drv"));
        assert!(looks_like_drv_path("/tmp/any/where.drv"));
        assert!(!looks_like_drv_path("x.drv"));
        assert!(!looks_like_drv_path("/nix/store/x"));
        assert!(!looks_like_drv_path("/nix/store/x\0.drv"));
    }
}
