//! The compact in-memory form of a graph node, as held by the LRU front.
//!
//! A resident node is one heap block ([`Packed`], whose layout is documented there): the cache entry holds
//! only the id and the block's pointer. Input and dependent ids come first, because graph walks read
//! nothing else, as varint deltas: inputs (in .drv order) from the id before, zigzag-encoded; dependents
//! (ascending) from the one before. Ids are numbered in discovery order, so a node's inputs are mostly
//! close together: on nixpkgs an id takes about 2 bytes instead of 4. The rest is varint-encoded symbols
//! and compressed store paths, decoded only when a caller asks for a whole node.
//!
//! Strings that repeat across nodes (systems, feature sets, output names and output-name sets) are interned
//! graph-wide in an [`Interner`]; store paths are unique per node, so they are stored with their
//! 32-character base-32 hash as 20 bytes and, for outputs whose name follows Nix's naming (`<drv name>` for
//! `out`, `<drv name>-<output>` otherwise), without a name at all.
//!
//! Everything here is pure and panic-free: the block is only ever written by [`Packed::build`], and reads
//! that do not find what the layout promises report a corrupt node instead of indexing out of bounds.

use std::collections::HashMap;
use std::fmt::Write;

use super::record::NodeV1;
use crate::nix::store_path::{self, DEFAULT_STORE_DIR, NIX_BASE32};

/// An index into the [`Interner`].
pub(crate) type Sym = u32;

/// What went wrong while packing or unpacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PackError {
    /// A count does not fit the layout (more than 65,535 outputs, or more than 2³² symbols).
    TooLarge(&'static str),
    /// The block does not hold what its layout promises (a bug, never caused by input).
    Corrupt(&'static str),
}

/// Graph-wide interning of small string lists: systems, feature sets, output names, output-name sets.
/// Never shrinks; its size is bounded by the number of *distinct* such values, which is small in practice.
/// Also owns the scratch buffer blocks are built in.
#[derive(Default)]
pub(crate) struct Interner {
    lists: Vec<Box<[Box<str>]>>,
    index: HashMap<Box<str>, Sym, lru::DefaultHasher>,
    scratch: String,
    /// Reused buffer for building blocks, so that each block is allocated once at its exact size.
    block: Vec<u8>,
}

impl Interner {
    /// The symbol of `items` (order matters), interning it if new.
    pub(crate) fn intern<S: AsRef<str>>(&mut self, items: &[S]) -> Result<Sym, PackError> {
        // The key is each item length-prefixed, so no separator can be forged by an item's contents.
        self.scratch.clear();
        for item in items {
            let item = item.as_ref();
            // Writing to a String cannot fail.
            let _ = write!(self.scratch, "{}:", item.len());
            self.scratch.push_str(item);
        }
        if let Some(&sym) = self.index.get(self.scratch.as_str()) {
            return Ok(sym);
        }
        let sym = Sym::try_from(self.lists.len()).map_err(|_| PackError::TooLarge("interned strings"))?;
        self.lists.push(items.iter().map(|s| Box::from(s.as_ref())).collect());
        self.index.insert(Box::from(self.scratch.as_str()), sym);
        Ok(sym)
    }

    /// The list interned as `sym`.
    pub(crate) fn get(&self, sym: Sym) -> Result<&[Box<str>], PackError> {
        self.lists.get(sym as usize).map(|l| &**l).ok_or(PackError::Corrupt("unknown symbol"))
    }

    /// The single string interned as `sym` (a system or an output name).
    fn get_one(&self, sym: Sym) -> Result<&str, PackError> {
        match self.get(sym)? {
            [one] => Ok(one),
            _ => Err(PackError::Corrupt("symbol is not a single string")),
        }
    }

    /// Number of distinct lists interned.
    pub(crate) fn len(&self) -> usize {
        self.lists.len()
    }
}

const FLAG_PREFER_LOCAL: u8 = 1;
const FLAG_ALLOW_SUBSTITUTES: u8 = 2;
const FLAG_FIXED_OUTPUT: u8 = 4;

/// A resident node: one block (the cache entry holds nothing else, which keeps it at 40 bytes), laid out as
///
/// ```text
/// n_inputs         varint
/// n_dependents     varint
/// input ids        n_inputs × varint zigzag(id − previous id), the first from 0   ─┐ walks read
/// dependent ids    n_dependents × varint (id − previous id), ascending, from 0    ─┘ only these
/// flags            u8
/// output count     varint
/// system           varint symbol
/// features         varint symbol
/// input outputs    n_inputs × varint symbol (the output names used of each input)
/// output names     output count × varint symbol
/// drv path         compressed path
/// output paths     output count × compressed path
/// ```
pub(crate) struct Packed {
    data: Box<[u8]>,
}

/// Where the regions of a block are.
#[derive(Clone, Copy)]
struct Counts {
    n_inputs: usize,
    n_dependents: usize,
    /// Offset of the input ids.
    ids: usize,
}

/// The offset after the `n` varints that start at `start`, if `data` holds them.
fn skip_varints(data: &[u8], start: usize, n: usize) -> Option<usize> {
    if n == 0 {
        return Some(start);
    }
    let mut left = n;
    for (i, b) in data.get(start..)?.iter().enumerate() {
        if b & 0x80 == 0 {
            left -= 1;
            if left == 0 {
                return Some(start + i + 1);
            }
        }
    }
    None
}

/// Zigzag: small magnitudes of either sign become small unsigned numbers.
fn zigzag(delta: i64) -> u64 {
    ((delta << 1) ^ (delta >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The ids of one region, decoded as they are read. A corrupt region ends early (walks then see fewer
/// ids; [`Packed::header`] and [`Packed::unpack`] report the corruption).
struct Ids<'a> {
    r: Reader<'a>,
    left: usize,
    previous: i64,
    /// Inputs: zigzag deltas; dependents: plain deltas.
    signed: bool,
}

impl Iterator for Ids<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let v = u64::try_from(self.r.varint().ok()?).ok();
        let delta = v.and_then(|v| if self.signed { Some(unzigzag(v)) } else { i64::try_from(v).ok() });
        let id = delta.and_then(|d| self.previous.checked_add(d));
        match id.and_then(|id| u32::try_from(id).ok()) {
            Some(found) => {
                self.previous = i64::from(found);
                Some(found)
            }
            None => {
                // Corrupt: the region ends here for good.
                self.left = 0;
                None
            }
        }
    }
}

/// Appends `ids` as varint deltas (zigzag when `signed`).
fn push_ids(out: &mut Vec<u8>, ids: impl Iterator<Item = u32>, signed: bool) {
    let mut previous = 0i64;
    for id in ids {
        let delta = i64::from(id) - previous;
        previous = i64::from(id);
        // On 64-bit targets a u64 is a usize; a delta of two u32s always fits in 33 bits.
        let v = if signed { zigzag(delta) } else { delta.unsigned_abs() };
        push_varint(out, v as usize);
    }
}

/// The variable part of a block, decoded up to the paths.
struct Header {
    flags: u8,
    system: Sym,
    features: Sym,
    input_outputs: Vec<Sym>,
    output_names: Vec<Sym>,
    /// Offset of the drv path.
    paths: usize,
}

impl Packed {
    /// Packs `node` with its `dependents` (sorted, without duplicates).
    pub(crate) fn build(
        node: &NodeV1,
        dependents: &[u32],
        interner: &mut Interner,
    ) -> Result<Packed, PackError> {
        u32::try_from(node.inputs.len()).map_err(|_| PackError::TooLarge("inputs"))?;
        u32::try_from(dependents.len()).map_err(|_| PackError::TooLarge("dependents"))?;
        // They are stored as deltas from the one before: out of order they would decode as other ids.
        if dependents.windows(2).any(|w| w[0] >= w[1]) {
            return Err(PackError::Corrupt("dependents not ascending"));
        }
        let system = interner.intern(&[node.system.as_str()])?;
        let features = interner.intern(&node.required_system_features)?;
        let input_outputs =
            node.inputs.iter().map(|(_, outs)| interner.intern(outs)).collect::<Result<Vec<_>, _>>()?;
        let output_names = node
            .outputs
            .iter()
            .map(|(name, _)| interner.intern(&[name.as_str()]))
            .collect::<Result<Vec<_>, _>>()?;
        let mut d = std::mem::take(&mut interner.block);
        d.clear();
        push_varint(&mut d, node.inputs.len());
        push_varint(&mut d, dependents.len());
        push_ids(&mut d, node.inputs.iter().map(|(id, _)| *id), true);
        push_ids(&mut d, dependents.iter().copied(), false);
        let mut flags = 0;
        for (set, flag) in [
            (node.prefer_local_build, FLAG_PREFER_LOCAL),
            (node.allow_substitutes, FLAG_ALLOW_SUBSTITUTES),
            (node.is_fixed_output, FLAG_FIXED_OUTPUT),
        ] {
            if set {
                flags |= flag;
            }
        }
        d.push(flags);
        push_varint(&mut d, node.outputs.len());
        push_varint(&mut d, system as usize);
        push_varint(&mut d, features as usize);
        for &sym in input_outputs.iter().chain(&output_names) {
            push_varint(&mut d, sym as usize);
        }
        let stem = drv_stem(&node.path);
        encode_path(&mut d, &node.path, None);
        for (name, path) in &node.outputs {
            encode_path(&mut d, path, stem.map(|s| (s, name.as_str())));
        }
        let data = Box::from(d.as_slice());
        interner.block = d;
        Ok(Packed { data })
    }

    /// The counts at the start of the block; `None` when the block is too short for them (walks then
    /// see no ids, and every decoding access reports it through [`Packed::header`]).
    fn counts(&self) -> Option<Counts> {
        let mut r = Reader::at(&self.data, 0);
        let (n_inputs, n_dependents) = (r.varint().ok()?, r.varint().ok()?);
        Some(Counts { n_inputs, n_dependents, ids: r.pos })
    }

    /// Offset of the dependent ids (after the input ids). Only what is asked for is skipped: a walk over
    /// inputs never scans the dependents, which a core derivation has tens of thousands of.
    fn dependents_at(&self, c: &Counts) -> Option<usize> {
        skip_varints(&self.data, c.ids, c.n_inputs)
    }

    /// Offset of the part after the ids.
    fn variable_at(&self, c: &Counts) -> Option<usize> {
        skip_varints(&self.data, self.dependents_at(c)?, c.n_dependents)
    }

    fn ids(&self, region: impl FnOnce(&Counts) -> Option<(usize, usize)>, signed: bool) -> Ids<'_> {
        let (start, left) = self.counts().as_ref().and_then(region).unwrap_or((self.data.len(), 0));
        Ids { r: Reader::at(&self.data, start), left, previous: 0, signed }
    }

    /// The ids of the input derivations, in the order of the .drv file.
    pub(crate) fn input_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids(|c| Some((c.ids, c.n_inputs)), true)
    }

    /// The ids of the nodes that have this node as an input, ascending.
    pub(crate) fn dependent_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids(|c| Some((self.dependents_at(c)?, c.n_dependents)), false)
    }

    fn header(&self) -> Result<Header, PackError> {
        let too_short = PackError::Corrupt("block too short");
        let c = self.counts().ok_or(too_short)?;
        let mut r = Reader::at(&self.data, self.variable_at(&c).ok_or(too_short)?);
        let flags = r.u8()?;
        let n_outputs = r.varint()?;
        let system = r.sym()?;
        let features = r.sym()?;
        let input_outputs = (0..c.n_inputs).map(|_| r.sym()).collect::<Result<Vec<_>, _>>()?;
        let output_names = (0..n_outputs).map(|_| r.sym()).collect::<Result<Vec<_>, _>>()?;
        Ok(Header { flags, system, features, input_outputs, output_names, paths: r.pos })
    }

    /// Adds `new` (sorted, no duplicates) to the dependents; ids already present are ignored.
    pub(crate) fn merge_dependents(&mut self, new: &[u32]) -> Result<(), PackError> {
        let old: Vec<u32> = self.dependent_ids().collect();
        let mut merged = Vec::with_capacity(old.len() + new.len());
        let (mut i, mut j) = (0, 0);
        while let (Some(&a), Some(&b)) = (old.get(i), new.get(j)) {
            if a <= b {
                merged.push(a);
                i += 1;
                j += usize::from(a == b);
            } else {
                merged.push(b);
                j += 1;
            }
        }
        merged.extend_from_slice(old.get(i..).unwrap_or_default());
        merged.extend_from_slice(new.get(j..).unwrap_or_default());
        if merged.len() == old.len() {
            return Ok(());
        }
        u32::try_from(merged.len()).map_err(|_| PackError::TooLarge("dependents"))?;
        let too_short = PackError::Corrupt("block too short");
        let c = self.counts().ok_or(too_short)?;
        let (dependents, variable) =
            (self.dependents_at(&c).ok_or(too_short)?, self.variable_at(&c).ok_or(too_short)?);
        let (inputs, tail) = match (self.data.get(c.ids..dependents), self.data.get(variable..)) {
            (Some(i), Some(t)) => (i, t),
            _ => return Err(too_short),
        };
        let mut d = Vec::with_capacity(
            varint_len(c.n_inputs) + varint_len(merged.len()) + inputs.len() + 5 * merged.len() + tail.len(),
        );
        push_varint(&mut d, c.n_inputs);
        push_varint(&mut d, merged.len());
        d.extend_from_slice(inputs);
        push_ids(&mut d, merged.iter().copied(), false);
        d.extend_from_slice(tail);
        d.shrink_to_fit();
        self.data = d.into_boxed_slice();
        Ok(())
    }

    /// The derivation path.
    pub(crate) fn path(&self) -> Result<String, PackError> {
        let mut r = Reader::at(&self.data, self.header()?.paths);
        decode_path(&mut r, None)
    }

    /// Everything but the dependents, as the record it was built from.
    /// The derivation's system, without decoding paths or outputs.
    pub(crate) fn system<'i>(&self, interner: &'i Interner) -> Result<&'i str, PackError> {
        interner.get_one(self.header()?.system)
    }

    pub(crate) fn unpack(&self, interner: &Interner) -> Result<NodeV1, PackError> {
        let h = self.header()?;
        let strings = |sym| -> Result<Vec<String>, PackError> {
            Ok(interner.get(sym)?.iter().map(|s| s.to_string()).collect())
        };
        let inputs = self
            .input_ids()
            .zip(&h.input_outputs)
            .map(|(id, &outs)| Ok((id, strings(outs)?)))
            .collect::<Result<Vec<_>, PackError>>()?;
        if inputs.len() != h.input_outputs.len() {
            return Err(PackError::Corrupt("block too short"));
        }
        let mut r = Reader::at(&self.data, h.paths);
        let path = decode_path(&mut r, None)?;
        let stem = drv_stem(&path);
        let mut outputs = Vec::with_capacity(h.output_names.len());
        for &sym in &h.output_names {
            let name = interner.get_one(sym)?;
            outputs.push((name.to_owned(), decode_path(&mut r, stem.map(|s| (s, name)))?));
        }
        Ok(NodeV1 {
            path,
            system: interner.get_one(h.system)?.to_owned(),
            outputs,
            inputs,
            required_system_features: strings(h.features)?,
            prefer_local_build: h.flags & FLAG_PREFER_LOCAL != 0,
            allow_substitutes: h.flags & FLAG_ALLOW_SUBSTITUTES != 0,
            is_fixed_output: h.flags & FLAG_FIXED_OUTPUT != 0,
        })
    }

    /// Heap bytes held by this node (the block).
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.data.len()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Store paths

/// Any string, as length and bytes.
const TAG_RAW: u8 = 0;
/// `/nix/store/<hash>-<name>`: 20 hash bytes, then the name as length and bytes.
const TAG_STORE: u8 = 1;
/// `/nix/store/<hash>-<name>` whose name follows from the derivation's: 20 hash bytes.
const TAG_DERIVED: u8 = 2;

/// The name of a derivation path without `.drv`, if the path is a store path.
fn drv_stem(path: &str) -> Option<&str> {
    split_store_path(path).and_then(|(_, name)| name.strip_suffix(".drv"))
}

/// `(hash, name)` of `/nix/store/<32 base-32 chars>-<non-empty name>`, the name unchecked (the loose
/// split of [`store_path::split_default_store`]: any such string compresses and decodes back exactly).
fn split_store_path(path: &str) -> Option<([u8; 20], &str)> {
    let (hash, name) = store_path::split_default_store(path)?;
    Some((hash_to_bytes(hash.as_bytes())?, name))
}

/// Whether `name` is what Nix names output `output` of a derivation named `stem`.
fn is_derived(name: &str, stem: &str, output: &str) -> bool {
    if output == "out" {
        return name == stem;
    }
    name.len() == stem.len() + 1 + output.len()
        && name.starts_with(stem)
        && name.ends_with(output)
        && name.as_bytes().get(stem.len()) == Some(&b'-')
}

/// Appends the compressed form of `path`; `derived` is `(drv stem, output name)` for an output path.
fn encode_path(out: &mut Vec<u8>, path: &str, derived: Option<(&str, &str)>) {
    match split_store_path(path) {
        Some((hash, name)) if derived.is_some_and(|(stem, o)| is_derived(name, stem, o)) => {
            out.push(TAG_DERIVED);
            out.extend_from_slice(&hash);
        }
        Some((hash, name)) => {
            out.push(TAG_STORE);
            out.extend_from_slice(&hash);
            push_varint(out, name.len());
            out.extend_from_slice(name.as_bytes());
        }
        None => {
            out.push(TAG_RAW);
            push_varint(out, path.len());
            out.extend_from_slice(path.as_bytes());
        }
    }
}

fn decode_path(r: &mut Reader<'_>, derived: Option<(&str, &str)>) -> Result<String, PackError> {
    let tag = r.u8()?;
    if tag == TAG_RAW {
        let len = r.varint()?;
        return std::str::from_utf8(r.bytes(len)?)
            .map(str::to_owned)
            .map_err(|_| PackError::Corrupt("path is not UTF-8"));
    }
    let hash = r.bytes(20)?;
    let mut s = String::with_capacity(DEFAULT_STORE_DIR.len() + 34 + 40);
    s.push_str(DEFAULT_STORE_DIR);
    s.push('/');
    bytes_to_hash(hash, &mut s);
    s.push('-');
    match (tag, derived) {
        (TAG_STORE, _) => {
            let len = r.varint()?;
            let name =
                std::str::from_utf8(r.bytes(len)?).map_err(|_| PackError::Corrupt("name is not UTF-8"))?;
            s.push_str(name);
        }
        (TAG_DERIVED, Some((stem, output))) => {
            s.push_str(stem);
            if output != "out" {
                s.push('-');
                s.push_str(output);
            }
        }
        _ => return Err(PackError::Corrupt("unknown path tag")),
    }
    Ok(s)
}

/// The value of each base-32 character; 0xff for bytes outside the alphabet.
const BASE32_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        t[NIX_BASE32[i] as usize] = i as u8;
        i += 1;
    }
    t
};

fn base32_value(c: u8) -> Option<u8> {
    Some(BASE32_VALUE[usize::from(c)]).filter(|&v| v != 0xff)
}

/// The 32 base-32 characters of a store path hash as 20 bytes (a bijection, not Nix's bit order).
fn hash_to_bytes(hash: &[u8]) -> Option<[u8; 20]> {
    if hash.len() != 32 {
        return None;
    }
    let mut out = [0u8; 20];
    let (mut acc, mut bits, mut n) = (0u32, 0u32, 0usize);
    for &c in hash {
        acc = (acc << 5) | u32::from(base32_value(c)?);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n)? = (acc >> bits) as u8;
            n += 1;
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn bytes_to_hash(bytes: &[u8], out: &mut String) {
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(NIX_BASE32[((acc >> bits) & 31) as usize]));
            acc &= (1 << bits) - 1;
        }
    }
}

fn varint_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn push_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A cursor over a block; every read is checked.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn at(data: &'a [u8], pos: usize) -> Reader<'a> {
        Reader { data, pos }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], PackError> {
        let end = self.pos.checked_add(n).ok_or(PackError::Corrupt("length overflow"))?;
        let s = self.data.get(self.pos..end).ok_or(PackError::Corrupt("block too short"))?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PackError> {
        match self.bytes(1)? {
            [b] => Ok(*b),
            _ => Err(PackError::Corrupt("block too short")),
        }
    }

    fn sym(&mut self) -> Result<Sym, PackError> {
        Sym::try_from(self.varint()?).map_err(|_| PackError::Corrupt("symbol out of range"))
    }

    fn varint(&mut self) -> Result<usize, PackError> {
        let mut v = 0usize;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= usize::from(b & 0x7f).checked_shl(shift).ok_or(PackError::Corrupt("varint"))?;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(PackError::Corrupt("varint too long"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(path: &str, outputs: &[(&str, &str)]) -> NodeV1 {
        NodeV1 {
            path: path.into(),
            system: "x86_64-linux".into(),
            outputs: outputs.iter().map(|(n, p)| (n.to_string(), p.to_string())).collect(),
            inputs: vec![(3, vec!["dev".into(), "out".into()]), (1, vec!["out".into()])],
            required_system_features: vec!["kvm".into(), "big-parallel".into()],
            prefer_local_build: true,
            allow_substitutes: false,
            is_fixed_output: false,
        }
    }

    const H: &str = "0123456789abcdfghijklmnpqrsvwxyz";

    #[test]
    fn hashes_round_trip() {
        for h in [
            H,
            "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
            "00000000000000000000000000000000",
            "0z0z0z0z1y1y1y1yabababab98989898",
        ] {
            let b = hash_to_bytes(h.as_bytes()).unwrap();
            let mut s = String::new();
            bytes_to_hash(&b, &mut s);
            assert_eq!(s, h);
        }
        assert_eq!(hash_to_bytes(b"0123456789abcdfghijklmnpqrsvwxye"), None, "e is not base-32");
        assert_eq!(hash_to_bytes(b"short"), None);
    }

    #[test]
    fn nodes_round_trip_and_compress() {
        let mut i = Interner::default();
        let cases = [
            node(
                &format!("/nix/store/{H}-hello-2.12.drv"),
                &[
                    ("dev", &format!("/nix/store/{H}-hello-2.12-dev")),
                    ("out", &format!("/nix/store/{H}-hello-2.12")),
                    ("weird", &format!("/nix/store/{H}-other")),
                    ("ca", ""),
                ],
            ),
            node("/elsewhere/x.drv", &[("out", "/elsewhere/x")]),
            node(&format!("/nix/store/{H}-ünïcode.drv"), &[("out", &format!("/nix/store/{H}-ünïcode"))]),
            node(
                &format!("/nix/store/{H}-a.drv"),
                &[("out", &format!("/nix/store/{H}-a-")), ("o", "/nix/store/x")],
            ),
        ];
        for n in &cases {
            let p = Packed::build(n, &[2, 9], &mut i).unwrap();
            assert_eq!(&p.unpack(&i).unwrap(), n);
            assert_eq!(p.dependent_ids().collect::<Vec<_>>(), vec![2, 9]);
            assert_eq!(p.path().unwrap(), n.path);
            assert_eq!(p.input_ids().collect::<Vec<_>>(), vec![3, 1]);
        }
        // 2 counts, 2 input ids (3 and 1: 1 byte each as zigzag deltas); flags, output count, system,
        // features; 2 input output sets, 4 output names; the drv path (tag, hash, name), `dev` and `out`
        // derived (tag, hash), `weird` with its name, `ca` empty, raw.
        let p = Packed::build(&cases[0], &[], &mut i).unwrap();
        assert_eq!(p.heap_bytes(), 2 + 2 + 4 + 2 + 4 + (1 + 20 + 1 + 14) + 2 * 21 + (21 + 1 + 5) + 2);
    }

    #[test]
    fn dependents_merge_sorted_and_deduplicated() {
        let mut i = Interner::default();
        let n = node("/x.drv", &[("out", "/x")]);
        let mut p = Packed::build(&n, &[4, 8], &mut i).unwrap();
        p.merge_dependents(&[1, 4, 9]).unwrap();
        assert_eq!(p.dependent_ids().collect::<Vec<_>>(), vec![1, 4, 8, 9]);
        p.merge_dependents(&[8]).unwrap();
        assert_eq!(p.dependent_ids().collect::<Vec<_>>(), vec![1, 4, 8, 9]);
        assert_eq!(p.unpack(&i).unwrap(), n, "the rest of the block is intact");
    }

    #[test]
    fn ids_round_trip_at_the_extremes_in_any_order() {
        let mut i = Interner::default();
        let inputs = [u32::MAX, 0, 7, 6, 1 << 20, (1 << 20) + 1, u32::MAX - 1, 0];
        let mut n = node("/x.drv", &[("out", "/x")]);
        n.inputs = inputs.iter().map(|&id| (id, vec!["out".to_string()])).collect();
        let dependents = [0, 1, 127, 128, 16_384, u32::MAX];
        let mut p = Packed::build(&n, &dependents, &mut i).unwrap();
        assert_eq!(p.input_ids().collect::<Vec<_>>(), inputs);
        assert_eq!(p.dependent_ids().collect::<Vec<_>>(), dependents);
        assert_eq!(p.unpack(&i).unwrap(), n);
        p.merge_dependents(&[2, u32::MAX - 1]).unwrap();
        assert_eq!(
            p.dependent_ids().collect::<Vec<_>>(),
            [0, 1, 2, 127, 128, 16_384, u32::MAX - 1, u32::MAX]
        );
        assert_eq!(p.input_ids().collect::<Vec<_>>(), inputs);
        assert_eq!(p.unpack(&i).unwrap(), n);
        assert!(Packed::build(&n, &[3, 2], &mut i).is_err(), "dependents out of order are refused");
        assert!(Packed::build(&n, &[2, 2], &mut i).is_err(), "and so are duplicates");
        // Neighbouring ids take one byte each, where fixed width took four.
        n.inputs = (1000..1010).map(|id| (id, vec!["out".to_string()])).collect();
        let near = Packed::build(&n, &(2000..2010).collect::<Vec<_>>(), &mut i).unwrap();
        let far = {
            n.inputs = (0..10).map(|k| (k * 100_000, vec!["out".to_string()])).collect();
            Packed::build(&n, &(0..10).map(|k| k * 100_000).collect::<Vec<_>>(), &mut i).unwrap()
        };
        // Far: 0 (1 byte), then 9 steps of 100,000 (3 bytes each); near: 1000 or 2000 (2 bytes), then 9
        // steps of 1 (1 byte each). Per region 28 against 11 bytes.
        assert_eq!(far.heap_bytes() - near.heap_bytes(), 2 * (28 - 11));
    }

    #[test]
    fn a_truncated_block_reads_as_corrupt_never_out_of_bounds() {
        let mut i = Interner::default();
        let mut n = node("/x.drv", &[("out", "/x")]);
        n.inputs = vec![(300, vec!["out".to_string()]), (5, vec!["out".to_string()])];
        let p = Packed::build(&n, &[70_000], &mut i).unwrap();
        for len in 0..p.data.len() {
            let cut = Packed { data: Box::from(&p.data[..len]) };
            assert!(cut.unpack(&i).is_err(), "cut at {len}");
            assert!(cut.input_ids().count() <= 2 && cut.dependent_ids().count() <= 1);
        }
    }

    #[test]
    fn interner_keys_cannot_collide() {
        let mut i = Interner::default();
        let a = i.intern(&["a:b"]).unwrap();
        let b = i.intern(&["a", "b"]).unwrap();
        let c = i.intern(&["1:a1:b"]).unwrap();
        assert!(a != b && b != c && a != c);
        assert_eq!(i.intern(&["a", "b"]).unwrap(), b);
        assert_eq!(i.get(b).unwrap().len(), 2);
        assert_eq!(i.len(), 3);
    }
}
