//! What a node offers ([`CapabilitySet`]) and what a daemon needs
//! ([`CapabilityFilter`]).
//!
//! A set holds tags (`"gpu"`, `"ssd"`) and numeric or text values
//! (`memory_gb = 64`, `region = "eu-west"`). A filter is a conjunction of
//! requirements; the default filter requires nothing and matches every set.
//!
//! ```
//! use cellmesh::capabilities::{CapabilityFilter, CapabilitySet};
//! let node = CapabilitySet::new().with_tag("gpu").with_number("memory_gb", 64);
//! let needs = CapabilityFilter::new().require_gpu().min_memory_gb(32);
//! assert!(node.matches(&needs));
//! assert!(!CapabilitySet::new().matches(&needs));
//! assert!(CapabilitySet::new().matches(&CapabilityFilter::default()));
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The tag a GPU-equipped node advertises.
pub const GPU_TAG: &str = "gpu";
/// The numeric key a node's memory (in GiB) is advertised under.
pub const MEMORY_GB: &str = "memory_gb";

/// A value a node advertises under a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CapabilityValue {
    /// A number (memory, cores, slots).
    Number(u64),
    /// Free text (region, architecture).
    Text(String),
}

/// The capabilities a node advertises.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilitySet {
    tags: BTreeSet<String>,
    values: BTreeMap<String, CapabilityValue>,
}

impl CapabilitySet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.insert(tag.into());
        self
    }

    /// Sets a numeric value.
    pub fn with_number(mut self, key: impl Into<String>, value: u64) -> Self {
        self.values
            .insert(key.into(), CapabilityValue::Number(value));
        self
    }

    /// Sets a text value.
    pub fn with_text(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.values
            .insert(key.into(), CapabilityValue::Text(value.into()));
        self
    }

    /// Whether the set has `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.contains(tag)
    }

    /// The value under `key`, if any.
    pub fn value(&self, key: &str) -> Option<&CapabilityValue> {
        self.values.get(key)
    }

    /// The tags, sorted.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.tags.iter().map(String::as_str)
    }

    /// Whether this set meets every requirement of `filter`.
    pub fn matches(&self, filter: &CapabilityFilter) -> bool {
        filter.requirements.iter().all(|r| r.is_met_by(self))
    }

    /// The first requirement of `filter` this set does not meet, for error
    /// messages.
    pub fn first_unmet<'f>(&self, filter: &'f CapabilityFilter) -> Option<&'f Requirement> {
        filter.requirements.iter().find(|r| !r.is_met_by(self))
    }
}

/// One requirement of a [`CapabilityFilter`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Requirement {
    /// The set has this tag.
    Tag(String),
    /// The set's numeric value under the key is at least this.
    AtLeast(String, u64),
    /// The set's text value under the key equals this.
    Equals(String, String),
}

impl Requirement {
    fn is_met_by(&self, set: &CapabilitySet) -> bool {
        match self {
            Requirement::Tag(tag) => set.has_tag(tag),
            Requirement::AtLeast(key, min) => {
                matches!(set.value(key), Some(CapabilityValue::Number(n)) if n >= min)
            }
            Requirement::Equals(key, want) => {
                matches!(set.value(key), Some(CapabilityValue::Text(t)) if t == want)
            }
        }
    }
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Requirement::Tag(tag) => write!(f, "tag {tag:?}"),
            Requirement::AtLeast(key, min) => write!(f, "{key} >= {min}"),
            Requirement::Equals(key, want) => write!(f, "{key} == {want:?}"),
        }
    }
}

/// What a daemon needs from the node it runs on: every requirement must hold.
/// `Default` requires nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilityFilter {
    requirements: Vec<Requirement>,
}

impl CapabilityFilter {
    /// A filter that requires nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires a tag.
    pub fn require_tag(mut self, tag: impl Into<String>) -> Self {
        self.requirements.push(Requirement::Tag(tag.into()));
        self
    }

    /// Requires the [`GPU_TAG`] tag.
    pub fn require_gpu(self) -> Self {
        self.require_tag(GPU_TAG)
    }

    /// Requires at least `gb` GiB under [`MEMORY_GB`].
    pub fn min_memory_gb(self, gb: u64) -> Self {
        self.at_least(MEMORY_GB, gb)
    }

    /// Requires a numeric value of at least `min` under `key`.
    pub fn at_least(mut self, key: impl Into<String>, min: u64) -> Self {
        self.requirements
            .push(Requirement::AtLeast(key.into(), min));
        self
    }

    /// Requires the text value `want` under `key`.
    pub fn equals(mut self, key: impl Into<String>, want: impl Into<String>) -> Self {
        self.requirements
            .push(Requirement::Equals(key.into(), want.into()));
        self
    }

    /// The requirements, in the order they were added.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether the filter requires nothing.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_text_and_tag_requirements() {
        let set = CapabilitySet::new()
            .with_tag("ssd")
            .with_number(MEMORY_GB, 16)
            .with_text("region", "eu");
        assert!(set.matches(&CapabilityFilter::new().min_memory_gb(16)));
        assert!(!set.matches(&CapabilityFilter::new().min_memory_gb(17)));
        assert!(set.matches(&CapabilityFilter::new().equals("region", "eu")));
        assert!(!set.matches(&CapabilityFilter::new().equals("region", "us")));
        assert!(!set.matches(&CapabilityFilter::new().require_gpu()));
        // A text value never satisfies a numeric requirement.
        assert!(!set.matches(&CapabilityFilter::new().at_least("region", 0)));
        let needs = CapabilityFilter::new().require_tag("ssd").require_gpu();
        assert_eq!(
            set.first_unmet(&needs),
            Some(&Requirement::Tag("gpu".into()))
        );
    }

    #[test]
    fn sets_and_filters_survive_the_wire_encoding() {
        let set = CapabilitySet::new()
            .with_tag("gpu")
            .with_number(MEMORY_GB, 64)
            .with_text("region", "eu");
        let back: CapabilitySet =
            postcard::from_bytes(&postcard::to_stdvec(&set).unwrap()).unwrap();
        assert_eq!(back, set);
        let filter = CapabilityFilter::new()
            .require_gpu()
            .min_memory_gb(8)
            .equals("region", "eu");
        let back: CapabilityFilter =
            postcard::from_bytes(&postcard::to_stdvec(&filter).unwrap()).unwrap();
        assert_eq!(back, filter);
    }
}
