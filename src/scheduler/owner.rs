//! Who asks for builds: an [`Owner`] is a jobset (a review or a GitHub run asking for its derivations) or
//! the rebuild of one derivation. This file holds the one conversion between an owner and its persisted
//! `u64` key (`build_owners`): jobset ids as they are, rebuilds as the derivation id with the high bit set.
//! Nothing else may compute or take apart an owner key; the encoding must never change (it is on disk).

use std::fmt;

use crate::graph::DrvId;
use crate::jobset::JobsetId;

/// The high bit of an owner key marks a rebuild; jobset ids stay below it.
const REBUILD_BIT: u64 = 1 << 63;

/// Who asked for builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    /// The builds a jobset asked for (`SchedulerHandle::request`).
    Jobset(JobsetId),
    /// The rebuild of one derivation and of the dependents its success requeues
    /// (`SchedulerHandle::rebuild`).
    Rebuild(DrvId),
}

impl Owner {
    /// The `build_owners` key: the jobset id, or `2^63 | drv id` for a rebuild.
    pub fn key(self) -> u64 {
        match self {
            Owner::Jobset(j) => j.0,
            Owner::Rebuild(d) => REBUILD_BIT | u64::from(d.0),
        }
    }

    /// The owner of a `build_owners` key; `None` for a key in the rebuild range whose derivation id does
    /// not fit a [`DrvId`] (no such key is ever written).
    pub fn from_key(key: u64) -> Option<Owner> {
        if key & REBUILD_BIT == 0 {
            return Some(Owner::Jobset(JobsetId(key)));
        }
        u32::try_from(key & !REBUILD_BIT).ok().map(|d| Owner::Rebuild(DrvId(d)))
    }

    /// Whether this is a jobset whose id lies in the range reserved for rebuilds (it cannot ask for builds).
    pub fn is_reserved(self) -> bool {
        matches!(self, Owner::Jobset(j) if j.0 & REBUILD_BIT != 0)
    }

    /// The owner this one's key names: a jobset id in the rebuild range names that rebuild, as its key
    /// always has (so waiting on or cancelling such an id reaches the rebuild).
    pub fn canonical(self) -> Owner {
        if self.is_reserved() {
            Owner::from_key(self.key()).unwrap_or(self)
        } else {
            self
        }
    }
}

impl From<JobsetId> for Owner {
    fn from(j: JobsetId) -> Owner {
        Owner::Jobset(j)
    }
}

/// The owner's key, as a number (history notes and error messages have always shown it so).
impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_persisted_encoding_is_pinned() {
        assert_eq!(Owner::Jobset(JobsetId(0)).key(), 0);
        assert_eq!(Owner::Jobset(JobsetId(42)).key(), 42);
        assert_eq!(Owner::Rebuild(DrvId(5)).key(), (1 << 63) | 5);
        assert_eq!(Owner::Rebuild(DrvId(0)).key(), 9_223_372_036_854_775_808);
        assert_eq!(Owner::Rebuild(DrvId(u32::MAX)).key(), (1 << 63) + u64::from(u32::MAX));
        for o in [
            Owner::Jobset(JobsetId(1)),
            Owner::Jobset(JobsetId((1 << 63) - 1)),
            Owner::Rebuild(DrvId(0)),
            Owner::Rebuild(DrvId(7)),
            Owner::Rebuild(DrvId(u32::MAX)),
        ] {
            assert_eq!(Owner::from_key(o.key()), Some(o));
        }
        assert_eq!(Owner::from_key((1 << 63) | (1 << 40)), None);
        assert_eq!(Owner::Rebuild(DrvId(5)).to_string(), "9223372036854775813");
        assert_eq!(Owner::Jobset(JobsetId(3)).to_string(), "3");
    }

    #[test]
    fn a_jobset_id_in_the_rebuild_range_names_the_rebuild() {
        let reserved = Owner::Jobset(JobsetId((1 << 63) | 9));
        assert!(reserved.is_reserved());
        assert_eq!(reserved.canonical(), Owner::Rebuild(DrvId(9)));
        assert!(!Owner::Jobset(JobsetId(9)).is_reserved());
        assert_eq!(Owner::Jobset(JobsetId(9)).canonical(), Owner::Jobset(JobsetId(9)));
        let unrepresentable = Owner::Jobset(JobsetId((1 << 63) | (1 << 40)));
        assert_eq!(unrepresentable.canonical(), unrepresentable);
    }
}
