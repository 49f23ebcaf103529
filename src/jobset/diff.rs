//! The base-vs-head diff of one job: which attributes were added, removed, changed (same attribute,
//! different derivation) or unchanged, and which evaluation errors appear on either side.
//!
//! Both jobsets are read in attribute order inside one read transaction and merge-joined, so a diff of
//! two nixpkgs-sized jobsets streams through in bounded memory apart from the (usually small) lists of
//! differences it returns.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::{decode_attr, AttrOutcome, Jobset, JobsetId, Jobsets};
use crate::store::schema::JOBSET_ATTRS;
use crate::store::StoreError;

/// How one attribute differs between base and head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
    Unchanged,
}

/// A derivation-level difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrChange {
    pub attr: String,
    pub kind: ChangeKind,
    /// The derivation's name (`pname-version`) on the head side, else the base side.
    pub name: String,
    pub system: String,
    pub base_drv: Option<String>,
    pub head_drv: Option<String>,
}

/// An attribute with an evaluation error on at least one side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorChange {
    pub attr: String,
    /// The error on the base side, if base failed to evaluate this attribute.
    pub base_error: Option<String>,
    /// The error on the head side, if head fails to evaluate this attribute.
    pub head_error: Option<String>,
    /// The derivation on the side that did evaluate, if any.
    pub base_drv: Option<String>,
    pub head_drv: Option<String>,
}

impl ErrorChange {
    /// Head fails where base evaluated (or the attribute is new and fails).
    pub fn is_new(&self) -> bool {
        self.head_error.is_some() && self.base_error.is_none()
    }
    /// Base failed where head evaluates.
    pub fn is_fixed(&self) -> bool {
        self.base_error.is_some() && self.head_error.is_none()
    }
}

/// The diff of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDiff {
    pub job: String,
    pub base: Jobset,
    pub head: Jobset,
    pub added: Vec<AttrChange>,
    pub removed: Vec<AttrChange>,
    pub changed: Vec<AttrChange>,
    pub unchanged: u64,
    pub errors: Vec<ErrorChange>,
}

impl JobDiff {
    /// Head derivations that are Added or Changed: what a review must build.
    pub fn to_build(&self) -> impl Iterator<Item = &AttrChange> {
        self.added.iter().chain(self.changed.iter())
    }
}

/// Diffs jobset `base` against jobset `head`.
pub fn diff(jobsets: &Jobsets, base: JobsetId, head: JobsetId) -> Result<JobDiff, StoreError> {
    let missing = |id: JobsetId| StoreError::Missing { table: "jobsets", key: id.to_string() };
    let base_js = jobsets.get(base)?.ok_or_else(|| missing(base))?;
    let head_js = jobsets.get(head)?.ok_or_else(|| missing(head))?;
    let mut out = JobDiff {
        job: head_js.key.job_name().to_string(),
        base: base_js,
        head: head_js,
        added: vec![],
        removed: vec![],
        changed: vec![],
        unchanged: 0,
        errors: vec![],
    };

    let tx = jobsets.store().db().begin_read()?;
    let table = tx.open_table(JOBSET_ATTRS)?;
    let mut b_iter = table.range((base.0, "")..(base.0 + 1, ""))?;
    let mut h_iter = table.range((head.0, "")..(head.0 + 1, ""))?;
    let mut b = next(&mut b_iter, base)?;
    let mut h = next(&mut h_iter, head)?;
    loop {
        let order = match (&b, &h) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ba, _)), Some((ha, _))) => ba.as_str().cmp(ha.as_str()),
        };
        match order {
            Ordering::Less => {
                if let Some((attr, outcome)) = b.take() {
                    classify(&mut out, attr, Some(outcome), None);
                }
                b = next(&mut b_iter, base)?;
            }
            Ordering::Greater => {
                if let Some((attr, outcome)) = h.take() {
                    classify(&mut out, attr, None, Some(outcome));
                }
                h = next(&mut h_iter, head)?;
            }
            Ordering::Equal => {
                if let (Some((attr, bo)), Some((_, ho))) = (b.take(), h.take()) {
                    classify(&mut out, attr, Some(bo), Some(ho));
                }
                b = next(&mut b_iter, base)?;
                h = next(&mut h_iter, head)?;
            }
        }
    }
    Ok(out)
}

type AttrRange<'a> = redb::Range<'a, (u64, &'static str), &'static [u8]>;

fn next(it: &mut AttrRange<'_>, id: JobsetId) -> Result<Option<(String, AttrOutcome)>, StoreError> {
    match it.next() {
        None => Ok(None),
        Some(entry) => {
            let (k, v) = entry?;
            let attr = k.value().1.to_string();
            let outcome = decode_attr(id, &attr, v.value())?;
            Ok(Some((attr, outcome)))
        }
    }
}

fn classify(out: &mut JobDiff, attr: String, base: Option<AttrOutcome>, head: Option<AttrOutcome>) {
    use AttrOutcome::{Drv, Error};
    let change = |attr: String, kind, named: &super::AttrDrv, base_drv, head_drv| AttrChange {
        attr,
        kind,
        name: named.name.clone(),
        system: named.system.clone(),
        base_drv,
        head_drv,
    };
    match (base, head) {
        (None, None) => {}
        (None, Some(Drv(h))) => {
            out.added.push(change(attr, ChangeKind::Added, &h, None, Some(h.drv_path.clone())))
        }
        (Some(Drv(b)), None) => {
            out.removed.push(change(attr, ChangeKind::Removed, &b, Some(b.drv_path.clone()), None))
        }
        (Some(Drv(b)), Some(Drv(h))) => {
            if b.drv_path == h.drv_path {
                out.unchanged += 1;
            } else {
                out.changed.push(change(
                    attr,
                    ChangeKind::Changed,
                    &h,
                    Some(b.drv_path.clone()),
                    Some(h.drv_path.clone()),
                ));
            }
        }
        (b, h) => {
            let (base_error, base_drv) = split(b);
            let (head_error, head_drv) = split(h);
            out.errors.push(ErrorChange { attr, base_error, head_error, base_drv, head_drv });
        }
    }

    fn split(o: Option<AttrOutcome>) -> (Option<String>, Option<String>) {
        match o {
            Some(Error { message }) => (Some(message), None),
            Some(Drv(d)) => (None, Some(d.drv_path)),
            None => (None, None),
        }
    }
}
