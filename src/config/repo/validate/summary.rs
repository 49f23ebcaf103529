//! Validation of the change-summary blocks, `package_change_summary` and `rebuild_impact`: booleans
//! and counts with their defaults and upper bounds.

use serde_json::Value;

use super::Validator;
use crate::config::repo::{
    PackageChangeSummaryConfig, RebuildImpactConfig, MAX_PACKAGES_LISTED, MAX_TOP_BLAST_RADIUS,
};

const SUMMARY_FIELDS: &[&str] = &["enabled", "max_packages_listed", "include_rebuild_only"];
const IMPACT_FIELDS: &[&str] = &["enabled", "max_top_blast_radius", "compute_full_blast_radius"];

impl Validator {
    pub(super) fn package_change_summary(&mut self, v: &Value) -> PackageChangeSummaryConfig {
        let path = "package_change_summary";
        let d = PackageChangeSummaryConfig::default();
        let Some(obj) = self.object(v, path) else { return d };
        self.unknown_fields(obj, path, SUMMARY_FIELDS);
        PackageChangeSummaryConfig {
            enabled: self.opt_bool(obj, path, "enabled", d.enabled),
            max_packages_listed: self.opt_count(
                obj,
                path,
                "max_packages_listed",
                d.max_packages_listed,
                MAX_PACKAGES_LISTED,
            ),
            include_rebuild_only: self.opt_bool(obj, path, "include_rebuild_only", d.include_rebuild_only),
        }
    }

    pub(super) fn rebuild_impact(&mut self, v: &Value) -> RebuildImpactConfig {
        let path = "rebuild_impact";
        let d = RebuildImpactConfig::default();
        let Some(obj) = self.object(v, path) else { return d };
        self.unknown_fields(obj, path, IMPACT_FIELDS);
        RebuildImpactConfig {
            enabled: self.opt_bool(obj, path, "enabled", d.enabled),
            max_top_blast_radius: self.opt_count(
                obj,
                path,
                "max_top_blast_radius",
                d.max_top_blast_radius,
                MAX_TOP_BLAST_RADIUS,
            ),
            compute_full_blast_radius: self.opt_bool(
                obj,
                path,
                "compute_full_blast_radius",
                d.compute_full_blast_radius,
            ),
        }
    }
}
