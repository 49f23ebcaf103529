//! Derivation (.drv) files: a parser and serializer for Nix's ATerm derivation format.
//!
//! A store derivation is one line of ATerm text:
//!
//! ```text
//! Derive([("out","/nix/store/…-x","","")],[("/nix/store/…-dep.drv",["dev","out"])],["/nix/store/…-src"],
//!        "x86_64-linux","/bin/sh",["-c","…"],[("builder","/bin/sh"),("name","x"),…])
//! ```
//!
//! i.e. outputs `(name, path, hashAlgo, hash)`, input derivations with the outputs used, input sources, the
//! system, the builder, its arguments and its environment. Strings are double-quoted; `\"`, `\\`, `\n`,
//! `\r` and `\t` are escapes and any other `\x` stands for `x`, as in Nix's own parser.
//!
//! [`parse_derivation`] reads the whole derivation in one pass over the bytes; strings without escapes (almost
//! all of them) are copied straight from the input. [`parse_graph_info`] reads only what the build graph
//! needs and skips arguments and environment values without allocating, about twice as fast on
//! real derivations. [`Derivation::to_aterm`] writes Nix's exact format, so `to_aterm(parse(x)) == x`
//! byte for byte for every derivation Nix wrote with UTF-8 arguments and environment.
//!
//! # Text encoding
//!
//! Nix strings are byte strings. Output names, store paths, hash fields, the system and the builder must be
//! valid UTF-8 (an error names the offending byte otherwise): they are identifiers this crate keys on.
//! Arguments and environment keys and values are decoded *lossily* (invalid sequences become U+FFFD), so
//! that a derivation embedding, say, a Latin-1 file's contents still parses; only the exact bytes of those
//! values are lost, and such a derivation no longer round-trips byte for byte.
//!
//! # Strictness
//!
//! The grammar is checked strictly (commas between list items, nothing after the closing parenthesis), but
//! store paths are not validated beyond UTF-8. `DrvWithVersion(…)` derivations, which Nix writes only for
//! dynamic-derivation dependencies (experimental feature `dynamic-derivations`), are rejected with
//! [`DrvErrorKind::Unsupported`]. Parsing never panics, whatever the input.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One output of a derivation, as written in the .drv file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DrvOutput {
    /// The output name, e.g. `out` or `dev`.
    pub name: String,
    /// The output's store path; empty for floating content-addressed (and deferred) outputs.
    pub path: String,
    /// `sha256`, `r:sha256` (recursive), `text:sha256`, …; empty for input-addressed outputs.
    pub hash_algo: String,
    /// The expected hash (base16) of a fixed output; empty otherwise.
    pub hash: String,
}

/// A parsed store derivation. Lists keep the order of the file (Nix writes them sorted).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Derivation {
    pub outputs: Vec<DrvOutput>,
    /// Input derivation paths, each with the names of the outputs used.
    pub input_drvs: Vec<(String, Vec<String>)>,
    pub input_srcs: Vec<String>,
    pub system: String,
    pub builder: String,
    /// Builder arguments (decoded lossily, see the module documentation).
    pub args: Vec<String>,
    /// Environment (decoded lossily, see the module documentation).
    pub env: Vec<(String, String)>,
}

/// What the build graph needs from a derivation; see [`parse_graph_info`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DrvGraphInfo {
    /// `(name, path)` of each output; the path is empty for floating content-addressed outputs.
    pub outputs: Vec<(String, String)>,
    pub input_drvs: Vec<(String, Vec<String>)>,
    pub system: String,
    pub required_system_features: Vec<String>,
    pub prefer_local_build: bool,
    pub allow_substitutes: bool,
    pub is_fixed_output: bool,
}

/// A malformed derivation: where (byte offset into the input) and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {kind}")]
pub struct DrvParseError {
    /// Byte offset into the input, at most the input's length (equal to it at end of input).
    pub offset: usize,
    pub kind: DrvErrorKind,
}

/// The kind of a [`DrvParseError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrvErrorKind {
    /// The grammar wanted `expected` here; `found` is the byte there, `None` at end of input.
    Expected { expected: &'static str, found: Option<u8> },
    /// A string that must be UTF-8 (store path, output name, system, …) is not.
    InvalidUtf8 { what: &'static str },
    /// A well-formed construct this parser does not support.
    Unsupported(&'static str),
}

impl fmt::Display for DrvErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DrvErrorKind::Expected { expected, found: None } => {
                write!(f, "expected {expected}, found end of input")
            }
            DrvErrorKind::Expected { expected, found: Some(b) } if b.is_ascii_graphic() || *b == b' ' => {
                write!(f, "expected {expected}, found '{}'", char::from(*b))
            }
            DrvErrorKind::Expected { expected, found: Some(b) } => {
                write!(f, "expected {expected}, found byte 0x{b:02x}")
            }
            DrvErrorKind::InvalidUtf8 { what } => write!(f, "{what} is not valid UTF-8"),
            DrvErrorKind::Unsupported(what) => write!(f, "unsupported: {what}"),
        }
    }
}

impl DrvParseError {
    /// The byte offset of the error in the input.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

/// A derivation file that could not be read or parsed; names the file.
#[derive(Debug, thiserror::Error)]
pub enum DrvReadError {
    #[error("cannot read derivation {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("malformed derivation {}: {source}", path.display())]
    Parse { path: PathBuf, source: DrvParseError },
}

/// Parses the text of a .drv file.
pub fn parse_derivation(bytes: &[u8]) -> Result<Derivation, DrvParseError> {
    let mut p = Parser { input: bytes, pos: 0 };
    p.header()?;
    let outputs = p.list(|p| p.output())?;
    p.expect(b',', "','")?;
    let input_drvs = p.list(|p| p.input_drv())?;
    p.expect(b',', "','")?;
    let input_srcs = p.list(|p| p.string_utf8("input source path"))?;
    p.expect(b',', "','")?;
    let system = p.string_utf8("system")?;
    p.expect(b',', "','")?;
    let builder = p.string_utf8("builder")?;
    p.expect(b',', "','")?;
    let args = p.list(|p| p.string_lossy())?;
    p.expect(b',', "','")?;
    let env = p.list(|p| {
        p.expect(b'(', "'('")?;
        let k = p.string_lossy()?;
        p.expect(b',', "','")?;
        let v = p.string_lossy()?;
        p.expect(b')', "')'")?;
        Ok((k, v))
    })?;
    p.trailer()?;
    Ok(Derivation { outputs, input_drvs, input_srcs, system, builder, args, env })
}

/// Reads and parses a .drv file.
pub fn read_derivation(path: &Path) -> Result<Derivation, DrvReadError> {
    let bytes =
        std::fs::read(path).map_err(|source| DrvReadError::Io { path: path.to_path_buf(), source })?;
    parse_derivation(&bytes).map_err(|source| DrvReadError::Parse { path: path.to_path_buf(), source })
}

/// Parses only what the build graph needs: accepts exactly the inputs [`parse_derivation`] accepts and
/// agrees with the corresponding [`Derivation`] methods, but does not allocate for input sources,
/// arguments and environment values other than the few it reads.
pub fn parse_graph_info(bytes: &[u8]) -> Result<DrvGraphInfo, DrvParseError> {
    let mut p = Parser { input: bytes, pos: 0 };
    p.header()?;
    let mut is_fixed_output = false;
    let mut n_outputs = 0usize;
    let outputs = p.list(|p| {
        let o = p.output()?;
        n_outputs += 1;
        is_fixed_output = o.name == "out" && !o.hash.is_empty();
        Ok((o.name, o.path))
    })?;
    is_fixed_output &= n_outputs == 1;
    p.expect(b',', "','")?;
    let input_drvs = p.list(|p| p.input_drv())?;
    p.expect(b',', "','")?;
    p.list(|p| p.skip_string(Some("input source path")))?;
    p.expect(b',', "','")?;
    let system = p.string_utf8("system")?;
    p.expect(b',', "','")?;
    p.skip_string(Some("builder"))?;
    p.expect(b',', "','")?;
    p.list(|p| p.skip_string(None))?;
    p.expect(b',', "','")?;
    let mut features = None;
    let mut prefer_local = None;
    let mut allow_subst = None;
    let mut json = None;
    p.list(|p| {
        p.expect(b'(', "'('")?;
        let k = p.string()?;
        p.expect(b',', "','")?;
        let slot = match &*k {
            b"requiredSystemFeatures" => Some(&mut features),
            b"preferLocalBuild" => Some(&mut prefer_local),
            b"allowSubstitutes" => Some(&mut allow_subst),
            b"__json" => Some(&mut json),
            _ => None,
        };
        match slot {
            // The first occurrence wins, as in `Derivation::env_get`.
            Some(slot) if slot.is_none() => *slot = Some(p.string_lossy()?),
            _ => p.skip_string(None)?,
        }
        p.expect(b')', "')'")?;
        Ok(())
    })?;
    p.trailer()?;
    let (required_system_features, prefer_local_build, allow_substitutes) = match json {
        Some(json) => {
            let a = GraphAttrs::from_json(&json);
            (a.features(), a.prefer_local_build(), a.allow_substitutes())
        }
        None => (
            features.as_deref().map(split_features).unwrap_or_default(),
            prefer_local.as_deref() == Some("1"),
            allow_subst.as_deref().unwrap_or("1") == "1",
        ),
    };
    Ok(DrvGraphInfo {
        outputs,
        input_drvs,
        system,
        required_system_features,
        prefer_local_build,
        allow_substitutes,
        is_fixed_output,
    })
}

impl Derivation {
    /// The value of environment variable `key` (the first, should the file repeat it).
    pub fn env_get(&self, key: &str) -> Option<&str> {
        self.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The structured attributes (`__structuredAttrs = true`, stored as JSON in env `__json`): `None` for a
    /// derivation without them, `Some(Err)` when the JSON is malformed.
    pub fn structured_attrs(&self) -> Option<Result<Value, serde_json::Error>> {
        self.env_get("__json").map(serde_json::from_str)
    }

    /// The system features a builder must offer (`requiredSystemFeatures`: a space-separated env value, or
    /// a list of strings in structured attributes). Only the declared ones: Nix additionally requires
    /// `ca-derivations` of builders for floating content-addressed derivations.
    pub fn required_system_features(&self) -> Vec<String> {
        match self.structured_attrs() {
            Some(Ok(v)) => json_features(v.get("requiredSystemFeatures")),
            Some(Err(_)) => Vec::new(),
            None => self.env_get("requiredSystemFeatures").map(split_features).unwrap_or_default(),
        }
    }

    /// `preferLocalBuild`: env value `"1"` (what Nix writes for `true`), or structured `true`.
    pub fn prefer_local_build(&self) -> bool {
        match self.structured_attrs() {
            Some(Ok(v)) => json_bool(v.get("preferLocalBuild"), false),
            Some(Err(_)) => false,
            None => self.env_get("preferLocalBuild") == Some("1"),
        }
    }

    /// `allowSubstitutes`: true unless set to something other than `"1"` (Nix writes `false` as `""`), or
    /// structured `false`. As in Nix, any env value but `"1"` means false.
    pub fn allow_substitutes(&self) -> bool {
        match self.structured_attrs() {
            Some(Ok(v)) => json_bool(v.get("allowSubstitutes"), true),
            Some(Err(_)) => true,
            None => self.env_get("allowSubstitutes").unwrap_or("1") == "1",
        }
    }

    /// A fixed-output derivation: exactly one output, `out`, with a known hash.
    pub fn is_fixed_output(&self) -> bool {
        matches!(self.outputs.as_slice(), [o] if o.name == "out" && !o.hash.is_empty())
    }

    /// The store path of output `name`; `None` if there is no such output or its path is not yet known
    /// (floating content-addressed).
    pub fn output_path(&self, name: &str) -> Option<&str> {
        self.outputs.iter().find(|o| o.name == name).map(|o| o.path.as_str()).filter(|p| !p.is_empty())
    }

    /// The derivation's `name` attribute: env `name`, or `name` in structured attributes.
    pub fn name(&self) -> Option<Cow<'_, str>> {
        if let Some(n) = self.env_get("name") {
            return Some(Cow::Borrowed(n));
        }
        match self.structured_attrs()? {
            Ok(Value::Object(mut m)) => match m.remove("name") {
                Some(Value::String(n)) => Some(Cow::Owned(n)),
                _ => None,
            },
            _ => None,
        }
    }

    /// [`Derivation::name`] split as Nix's `DrvName` does: the version starts after the first `-` not
    /// followed by a letter (`"hello-2.12"` → `("hello", "2.12")`, `"foo-bar"` → `("foo-bar", "")`).
    pub fn pname_version(&self) -> Option<(String, String)> {
        let name = self.name()?;
        let b = name.as_bytes();
        for (i, &c) in b.iter().enumerate() {
            if c == b'-' && b.get(i + 1).is_some_and(|n| !n.is_ascii_alphabetic()) {
                return Some((name.get(..i)?.to_owned(), name.get(i + 1..)?.to_owned()));
            }
        }
        Some((name.into_owned(), String::new()))
    }

    /// Writes the derivation in Nix's ATerm format, byte for byte as Nix does.
    pub fn to_aterm(&self) -> String {
        let strs = |v: &[String]| v.iter().map(|s| s.len() + 3).sum::<usize>();
        let size = 64
            + self
                .outputs
                .iter()
                .map(|o| o.name.len() + o.path.len() + o.hash_algo.len() + o.hash.len() + 16)
                .sum::<usize>()
            + self.input_drvs.iter().map(|(p, o)| p.len() + strs(o) + 8).sum::<usize>()
            + strs(&self.input_srcs)
            + self.system.len()
            + self.builder.len()
            + strs(&self.args)
            + self.env.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>();
        let mut s = String::with_capacity(size + size / 32);
        s.push_str("Derive([");
        for (i, o) in self.outputs.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('(');
            push_str(&mut s, &o.name);
            s.push(',');
            push_str(&mut s, &o.path);
            s.push(',');
            push_str(&mut s, &o.hash_algo);
            s.push(',');
            push_str(&mut s, &o.hash);
            s.push(')');
        }
        s.push_str("],[");
        for (i, (path, outs)) in self.input_drvs.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('(');
            push_str(&mut s, path);
            s.push(',');
            push_list(&mut s, outs);
            s.push(')');
        }
        s.push_str("],");
        push_list(&mut s, &self.input_srcs);
        s.push(',');
        push_str(&mut s, &self.system);
        s.push(',');
        push_str(&mut s, &self.builder);
        s.push(',');
        push_list(&mut s, &self.args);
        s.push_str(",[");
        for (i, (k, v)) in self.env.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('(');
            push_str(&mut s, k);
            s.push(',');
            push_str(&mut s, v);
            s.push(')');
        }
        s.push_str("])");
        s
    }
}

fn push_list(s: &mut String, items: &[String]) {
    s.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        push_str(s, item);
    }
    s.push(']');
}

/// Appends `v` quoted and escaped as Nix does.
fn push_str(s: &mut String, v: &str) {
    s.push('"');
    let mut run = 0;
    for (i, c) in v.bytes().enumerate() {
        let esc = match c {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            _ => continue,
        };
        // `i` is at an ASCII byte, hence a char boundary.
        s.push_str(v.get(run..i).unwrap_or_default());
        s.push_str(esc);
        run = i + 1;
    }
    s.push_str(v.get(run..).unwrap_or_default());
    s.push('"');
}

fn split_features(v: &str) -> Vec<String> {
    v.split([' ', '\t', '\n', '\r']).filter(|f| !f.is_empty()).map(String::from).collect()
}

fn json_features(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(String::from).collect(),
        _ => Vec::new(),
    }
}

fn json_bool(v: Option<&Value>, default: bool) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        _ => default,
    }
}

/// The structured attributes [`parse_graph_info`] reads, without building the whole JSON tree.
#[derive(Default, serde::Deserialize)]
struct GraphAttrs {
    #[serde(rename = "requiredSystemFeatures")]
    features: Option<Value>,
    #[serde(rename = "preferLocalBuild")]
    prefer_local: Option<Value>,
    #[serde(rename = "allowSubstitutes")]
    allow_subst: Option<Value>,
    /// Set when the JSON is malformed: every attribute takes its default, as in [`Derivation`].
    #[serde(skip)]
    malformed: bool,
}

impl GraphAttrs {
    fn from_json(json: &str) -> GraphAttrs {
        match serde_json::from_str::<GraphAttrs>(json) {
            Ok(a) => a,
            // Duplicate keys (the last wins in `Value`) or malformed JSON: decide as `Derivation` does.
            Err(_) => match serde_json::from_str::<Value>(json) {
                Ok(mut v) => GraphAttrs {
                    features: v.get_mut("requiredSystemFeatures").map(Value::take),
                    prefer_local: v.get_mut("preferLocalBuild").map(Value::take),
                    allow_subst: v.get_mut("allowSubstitutes").map(Value::take),
                    malformed: false,
                },
                Err(_) => GraphAttrs { malformed: true, ..GraphAttrs::default() },
            },
        }
    }
    fn features(&self) -> Vec<String> {
        json_features(self.features.as_ref())
    }
    fn prefer_local_build(&self) -> bool {
        !self.malformed && json_bool(self.prefer_local.as_ref(), false)
    }
    fn allow_substitutes(&self) -> bool {
        self.malformed || json_bool(self.allow_subst.as_ref(), true)
    }
}

/// Index of the first `"` or `\` in `s`, eight bytes at a time.
#[inline]
fn find_special(s: &[u8]) -> Option<usize> {
    const LO: u64 = u64::from_ne_bytes([0x01; 8]);
    const HI: u64 = u64::from_ne_bytes([0x80; 8]);
    const QUOTE: u64 = LO * b'"' as u64;
    const BACKSLASH: u64 = LO * b'\\' as u64;
    let mut chunks = s.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else { break };
        let v = u64::from_le_bytes(bytes);
        let q = v ^ QUOTE;
        let b = v ^ BACKSLASH;
        // Classic "has zero byte": exact for the lowest match, which is the one we want.
        let m = ((q.wrapping_sub(LO) & !q) | (b.wrapping_sub(LO) & !b)) & HI;
        if m != 0 {
            return Some(base + (m.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks.remainder().iter().position(|&c| c == b'"' || c == b'\\').map(|i| base + i)
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, expected: &'static str) -> DrvParseError {
        DrvParseError { offset: self.pos, kind: DrvErrorKind::Expected { expected, found: self.peek() } }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    #[inline]
    fn rest(&self) -> &'a [u8] {
        self.input.get(self.pos..).unwrap_or_default()
    }

    #[inline]
    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.pos += usize::from(hit);
        hit
    }

    #[inline]
    fn expect(&mut self, c: u8, expected: &'static str) -> Result<(), DrvParseError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.err(expected))
        }
    }

    fn header(&mut self) -> Result<(), DrvParseError> {
        const DERIVE: &[u8] = b"Derive(";
        if self.rest().starts_with(b"DrvWithVersion(") {
            return Err(DrvParseError {
                offset: self.pos,
                kind: DrvErrorKind::Unsupported(
                    "DrvWithVersion derivation (dynamic derivation dependencies, experimental in Nix)",
                ),
            });
        }
        for &c in DERIVE {
            self.expect(c, "'Derive('")?;
        }
        Ok(())
    }

    fn trailer(&mut self) -> Result<(), DrvParseError> {
        self.expect(b')', "')'")?;
        if self.pos < self.input.len() {
            return Err(self.err("end of input"));
        }
        Ok(())
    }

    /// `[` item (`,` item)* `]`, or `[]`.
    #[inline]
    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, DrvParseError>,
    ) -> Result<Vec<T>, DrvParseError> {
        self.expect(b'[', "'['")?;
        let mut v = Vec::new();
        if self.eat(b']') {
            return Ok(v);
        }
        loop {
            v.push(item(self)?);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(v);
                }
                _ => return Err(self.err("',' or ']'")),
            }
        }
    }

    fn output(&mut self) -> Result<DrvOutput, DrvParseError> {
        self.expect(b'(', "'('")?;
        let name = self.string_utf8("output name")?;
        self.expect(b',', "','")?;
        let path = self.string_utf8("output path")?;
        self.expect(b',', "','")?;
        let hash_algo = self.string_utf8("output hash algorithm")?;
        self.expect(b',', "','")?;
        let hash = self.string_utf8("output hash")?;
        self.expect(b')', "')'")?;
        Ok(DrvOutput { name, path, hash_algo, hash })
    }

    fn input_drv(&mut self) -> Result<(String, Vec<String>), DrvParseError> {
        self.expect(b'(', "'('")?;
        let path = self.string_utf8("input derivation path")?;
        self.expect(b',', "','")?;
        if self.peek() == Some(b'(') {
            return Err(DrvParseError {
                offset: self.pos,
                kind: DrvErrorKind::Unsupported("dynamic derivation dependency (outputs of an output)"),
            });
        }
        let outs = self.list(|p| p.string_utf8("input derivation output name"))?;
        self.expect(b')', "')'")?;
        Ok((path, outs))
    }

    /// A quoted string, unescaped: borrowed from the input when it holds no escape.
    #[inline]
    fn string(&mut self) -> Result<Cow<'a, [u8]>, DrvParseError> {
        self.expect(b'"', "'\"'")?;
        let rest = self.rest();
        let Some(i) = find_special(rest) else {
            self.pos = self.input.len();
            return Err(self.err("closing '\"'"));
        };
        if rest.get(i) == Some(&b'"') {
            self.pos += i + 1;
            return Ok(Cow::Borrowed(rest.get(..i).unwrap_or_default()));
        }
        self.string_escaped(rest.get(..i).unwrap_or_default(), i)
    }

    /// The rest of a string after `prefix`, which ends `at` bytes further at a backslash.
    #[cold]
    fn string_escaped(&mut self, prefix: &[u8], at: usize) -> Result<Cow<'a, [u8]>, DrvParseError> {
        let mut buf = Vec::with_capacity(prefix.len() + 32);
        buf.extend_from_slice(prefix);
        self.pos += at;
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(buf));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = self.peek().ok_or_else(|| self.err("escaped character"))?;
                    buf.push(match c {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        c => c,
                    });
                    self.pos += 1;
                }
                _ => {}
            }
            let rest = self.rest();
            let Some(i) = find_special(rest) else {
                self.pos = self.input.len();
                return Err(self.err("closing '\"'"));
            };
            buf.extend_from_slice(rest.get(..i).unwrap_or_default());
            self.pos += i;
        }
    }

    fn string_utf8(&mut self, what: &'static str) -> Result<String, DrvParseError> {
        let start = self.pos + 1;
        let invalid = |offset| DrvParseError { offset, kind: DrvErrorKind::InvalidUtf8 { what } };
        match self.string()? {
            Cow::Borrowed(b) => match std::str::from_utf8(b) {
                Ok(s) => Ok(s.to_owned()),
                Err(e) => Err(invalid(start + e.valid_up_to())),
            },
            // Offsets shift with escapes: name the string's first byte.
            Cow::Owned(v) => String::from_utf8(v).map_err(|_| invalid(start)),
        }
    }

    fn string_lossy(&mut self) -> Result<String, DrvParseError> {
        Ok(match self.string()? {
            Cow::Borrowed(b) => String::from_utf8_lossy(b).into_owned(),
            Cow::Owned(v) => match String::from_utf8(v) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            },
        })
    }

    /// Skips a string; checks it is UTF-8 when `utf8` names what it is.
    fn skip_string(&mut self, utf8: Option<&'static str>) -> Result<(), DrvParseError> {
        if let Some(what) = utf8 {
            return self.string_utf8(what).map(drop);
        }
        self.expect(b'"', "'\"'")?;
        loop {
            let rest = self.rest();
            let Some(i) = find_special(rest) else {
                self.pos = self.input.len();
                return Err(self.err("closing '\"'"));
            };
            self.pos += i + 1;
            if rest.get(i) == Some(&b'"') {
                return Ok(());
            }
            if self.peek().is_none() {
                return Err(self.err("escaped character"));
            }
            self.pos += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPLE: &str = r#"Derive([("out","/nix/store/aaaa-x","","")],[("/nix/store/bbbb-dep.drv",["dev","out"])],["/nix/store/cccc-src"],"x86_64-linux","/bin/sh",["-c","echo \"hi\"\\n > $out\n\t\r"],[("builder","/bin/sh"),("name","hello-2.12"),("requiredSystemFeatures","kvm  big-parallel"),("preferLocalBuild","1"),("allowSubstitutes","")])"#;

    #[test]
    fn parses_fields_and_escapes() {
        let d = parse_derivation(SIMPLE.as_bytes()).unwrap();
        assert_eq!(d.outputs.len(), 1);
        assert_eq!(d.output_path("out"), Some("/nix/store/aaaa-x"));
        assert_eq!(d.input_drvs, vec![("/nix/store/bbbb-dep.drv".into(), vec!["dev".into(), "out".into()])]);
        assert_eq!(d.input_srcs, vec!["/nix/store/cccc-src".to_string()]);
        assert_eq!(d.args[1], "echo \"hi\"\\n > $out\n\t\r");
        assert_eq!(d.required_system_features(), vec!["kvm", "big-parallel"]);
        assert!(d.prefer_local_build());
        assert!(!d.allow_substitutes());
        assert!(!d.is_fixed_output());
        assert_eq!(d.pname_version(), Some(("hello".into(), "2.12".into())));
        assert_eq!(d.to_aterm(), SIMPLE);
    }

    #[test]
    fn graph_info_agrees() {
        let d = parse_derivation(SIMPLE.as_bytes()).unwrap();
        let g = parse_graph_info(SIMPLE.as_bytes()).unwrap();
        assert_eq!(g.outputs, vec![("out".to_string(), "/nix/store/aaaa-x".to_string())]);
        assert_eq!(g.input_drvs, d.input_drvs);
        assert_eq!(g.required_system_features, d.required_system_features());
        assert!(g.prefer_local_build && !g.allow_substitutes && !g.is_fixed_output);
    }

    #[test]
    fn unknown_escape_is_the_character() {
        let d = parse_derivation(br#"Derive([],[],[],"s","b",["\a\\\q"],[])"#).unwrap();
        assert_eq!(d.args, vec!["a\\q"]);
    }

    #[test]
    fn find_special_matches_naive() {
        let s = b"abcdefgh\x80\xa2\xdc\x01\"ijklmnop\\q";
        for start in 0..s.len() {
            let naive = s[start..].iter().position(|&c| c == b'"' || c == b'\\');
            assert_eq!(find_special(&s[start..]), naive, "from {start}");
        }
    }

    #[test]
    fn errors_name_offsets() {
        let e = parse_derivation(b"Derive([],[] [],\"s\",\"b\",[],[])").unwrap_err();
        assert_eq!(e.offset, 12);
        assert_eq!(e.to_string(), "at byte 12: expected ',', found ' '");
        let e = parse_derivation(b"Derive([(\"out\" ").unwrap_err();
        assert_eq!(e.to_string(), "at byte 14: expected ',', found ' '");
        let e = parse_derivation(b"Derive([],[],[],\"s\",\"b\",[\"a\\").unwrap_err();
        assert_eq!(e.to_string(), "at byte 28: expected escaped character, found end of input");
        let e = parse_derivation(b"Derivation(").unwrap_err();
        assert_eq!(e.offset, 5);
        let e = parse_derivation(b"DrvWithVersion(\"xp-dyn-drv\",").unwrap_err();
        assert!(matches!(e.kind, DrvErrorKind::Unsupported(_)), "{e}");
        let e = parse_derivation(b"Derive([],[],[\"/nix/\xff\"],\"s\",\"b\",[],[])").unwrap_err();
        assert_eq!(e.to_string(), "at byte 20: input source path is not valid UTF-8");
        let e = parse_derivation(b"Derive([],[],[],\"s\",\"b\",[],[]))").unwrap_err();
        assert_eq!(e.to_string(), "at byte 30: expected end of input, found ')'");
    }
}
