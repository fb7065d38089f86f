//! The execution-cell document: what to run, with which authority, for how
//! long and where.
//!
//! Documents are JSON in camelCase. Unknown fields are rejected when parsing
//! (the error names the field) and [`ExecutionCellDocument::validate`] lists
//! every rule a parsed document breaks.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::capabilities::CapabilityFilter;

/// The `apiVersion` this crate writes.
pub const API_VERSION: &str = "cellmesh.dev/v1";
/// `apiVersion`s accepted when reading (the earlier system's included).
pub const ACCEPTED_API_VERSIONS: &[&str] = &[API_VERSION, "cellos.io/v1"];
/// The only `kind` a cell document has.
pub const KIND: &str = "ExecutionCell";
/// Longest accepted cell id.
pub const MAX_ID_LEN: usize = 128;
/// Largest document [`ExecutionCellDocument::from_json`] reads.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// A cell document: `{"apiVersion", "kind": "ExecutionCell", "spec"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecutionCellDocument {
    /// Schema version, one of [`ACCEPTED_API_VERSIONS`].
    pub api_version: String,
    /// Always [`KIND`].
    pub kind: String,
    /// What the cell is.
    pub spec: ExecutionCellSpec,
}

/// The body of a cell document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecutionCellSpec {
    /// The cell's id: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}` without `..`.
    pub id: String,
    /// What the cell may reach and use.
    #[serde(default)]
    pub authority: Authority,
    /// How long the cell may live.
    pub lifetime: Lifetime,
    /// The command the cell runs, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunSpec>,
    /// Where the cell should be placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementSpec>,
    /// Ids that tie the cell to the work it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<Correlation>,
}

/// What a cell may reach and use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authority {
    /// Names of secrets the cell may read.
    #[serde(default)]
    pub secret_refs: Vec<String>,
    /// Destinations the cell may open connections to.
    #[serde(default)]
    pub egress_rules: Vec<EgressRule>,
}

/// One allowed outbound destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Protocol (`tcp` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// How long a cell may live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Lifetime {
    /// Seconds from start until the cell is torn down; at least 1.
    pub ttl_seconds: u64,
}

/// The command a cell runs. There is no shell: `argv[0]` is executed with
/// the rest as its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunSpec {
    /// Program and arguments; non-empty, no empty or NUL-containing entry.
    pub argv: Vec<String>,
    /// Working directory (the backend's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    /// Kill the command after this many milliseconds; at most the TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RunLimits>,
}

/// Resource limits of a command. Every limit that is set must be non-zero.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunLimits {
    /// Most bytes of stdout and of stderr kept (each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    /// Address-space limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU-time limit in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u64>,
    /// Most processes (and threads) the cell may have at once; applied
    /// through the cell's control group (`pids.max`) where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u64>,
    /// CPU bandwidth in milli-CPUs (1000 = one full CPU); applied through
    /// the cell's control group (`cpu.max`) where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
}

/// Where a cell should be placed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlacementSpec {
    /// Pool hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
    /// Queue hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_name: Option<String>,
    /// What the node running the cell must offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<CapabilityFilter>,
}

/// Ids that tie a cell to the work it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Correlation {
    /// The caller's correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The run this cell is part of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A rule a document breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    /// `apiVersion` is not one of [`ACCEPTED_API_VERSIONS`].
    UnknownApiVersion,
    /// `kind` is not [`KIND`].
    WrongKind,
    /// The value is empty.
    Empty,
    /// The id does not match `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
    MalformedId,
    /// The id contains `..`.
    DotDot,
    /// The value contains a NUL byte.
    ContainsNul,
    /// The value is zero.
    Zero,
    /// `timeoutMs` is longer than `lifetime.ttlSeconds`.
    TimeoutBeyondTtl,
    /// `limits.outputBytes` is above
    /// [`MAX_OUTPUT_BYTES`](crate::cell::MAX_OUTPUT_BYTES).
    OutputAboveMaximum,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::UnknownApiVersion => "is not a known apiVersion",
            Rule::WrongKind => "must be \"ExecutionCell\"",
            Rule::Empty => "must not be empty",
            Rule::MalformedId => "must match [A-Za-z0-9][A-Za-z0-9._-]{0,127}",
            Rule::DotDot => "must not contain \"..\"",
            Rule::ContainsNul => "must not contain a NUL byte",
            Rule::Zero => "must be greater than zero",
            Rule::TimeoutBeyondTtl => "must not exceed lifetime.ttlSeconds",
            Rule::OutputAboveMaximum => "must not exceed 67108864 (64 MiB)",
        })
    }
}

/// One broken rule, with the path of the field that breaks it
/// (`spec.run.argv[2]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Path of the field, as written in the document.
    pub field: String,
    /// The rule it breaks.
    pub rule: Rule,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.rule)
    }
}

/// Why a cell document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The JSON does not parse into a document (an unknown field, a missing
    /// one, a wrong type); serde's message names the field.
    #[error("cell document does not parse: {0}")]
    Parse(String),
    /// The document is larger than [`MAX_DOCUMENT_BYTES`].
    #[error("cell document is {0} bytes, more than the {MAX_DOCUMENT_BYTES} allowed")]
    TooLarge(usize),
    /// The document parses but breaks rules, all listed.
    #[error("cell {id:?} is invalid: {}", list(.violations))]
    Invalid {
        /// The document's id as written (possibly the offending value).
        id: String,
        /// Every broken rule.
        violations: Vec<Violation>,
    },
}

fn list(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ExecutionCellDocument {
    /// A document with [`API_VERSION`], [`KIND`] and `spec`.
    pub fn new(spec: ExecutionCellSpec) -> Self {
        Self {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            spec,
        }
    }

    /// Parses and validates a JSON document.
    ///
    /// # Errors
    /// [`SpecError::TooLarge`], [`SpecError::Parse`] (naming an unknown or
    /// missing field) or [`SpecError::Invalid`].
    pub fn from_json(json: &[u8]) -> Result<Self, SpecError> {
        if json.len() > MAX_DOCUMENT_BYTES {
            return Err(SpecError::TooLarge(json.len()));
        }
        let doc: Self =
            serde_json::from_slice(json).map_err(|e| SpecError::Parse(e.to_string()))?;
        doc.validate()?;
        Ok(doc)
    }

    /// The document as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, numbers and maps with string keys always
        // serializes.
        serde_json::to_vec(self).expect("a cell document serializes to JSON")
    }

    /// The cell's id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// What a node must offer to run the cell (`placement.requires`; any
    /// node when absent).
    pub fn placement_filter(&self) -> CapabilityFilter {
        self.spec
            .placement
            .as_ref()
            .and_then(|p| p.requires.clone())
            .unwrap_or_default()
    }

    /// Checks every rule and reports all that are broken.
    ///
    /// # Errors
    /// [`SpecError::Invalid`] listing each broken rule with its field.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut out = Vec::new();
        let mut bad = |field: &str, rule: Rule| {
            out.push(Violation {
                field: field.to_string(),
                rule,
            })
        };
        if !ACCEPTED_API_VERSIONS.contains(&self.api_version.as_str()) {
            bad("apiVersion", Rule::UnknownApiVersion);
        }
        if self.kind != KIND {
            bad("kind", Rule::WrongKind);
        }
        let spec = &self.spec;
        if let Some(rule) = id_rule(&spec.id) {
            bad("spec.id", rule);
        }
        if spec.lifetime.ttl_seconds == 0 {
            bad("spec.lifetime.ttlSeconds", Rule::Zero);
        }
        for (i, secret) in spec.authority.secret_refs.iter().enumerate() {
            if secret.is_empty() {
                bad(&format!("spec.authority.secretRefs[{i}]"), Rule::Empty);
            }
        }
        for (i, rule) in spec.authority.egress_rules.iter().enumerate() {
            if rule.host.is_empty() {
                bad(
                    &format!("spec.authority.egressRules[{i}].host"),
                    Rule::Empty,
                );
            }
            if rule.port == 0 {
                bad(&format!("spec.authority.egressRules[{i}].port"), Rule::Zero);
            }
        }
        if let Some(run) = &spec.run {
            if run.argv.is_empty() {
                bad("spec.run.argv", Rule::Empty);
            }
            for (i, arg) in run.argv.iter().enumerate() {
                if arg.is_empty() {
                    bad(&format!("spec.run.argv[{i}]"), Rule::Empty);
                } else if arg.contains('\0') {
                    bad(&format!("spec.run.argv[{i}]"), Rule::ContainsNul);
                }
            }
            if let Some(dir) = &run.working_directory {
                if dir.is_empty() {
                    bad("spec.run.workingDirectory", Rule::Empty);
                } else if dir.contains('\0') {
                    bad("spec.run.workingDirectory", Rule::ContainsNul);
                }
            }
            match run.timeout_ms {
                Some(0) => bad("spec.run.timeoutMs", Rule::Zero),
                Some(ms) if ms > spec.lifetime.ttl_seconds.saturating_mul(1000) => {
                    bad("spec.run.timeoutMs", Rule::TimeoutBeyondTtl)
                }
                _ => {}
            }
            if let Some(limits) = &run.limits {
                for (name, value) in [
                    ("outputBytes", limits.output_bytes),
                    ("memoryBytes", limits.memory_bytes),
                    ("cpuSeconds", limits.cpu_seconds),
                    ("maxProcesses", limits.max_processes),
                    ("cpuMillis", limits.cpu_millis),
                ] {
                    if value == Some(0) {
                        bad(&format!("spec.run.limits.{name}"), Rule::Zero);
                    }
                }
                if limits
                    .output_bytes
                    .is_some_and(|n| n > crate::cell::MAX_OUTPUT_BYTES)
                {
                    bad("spec.run.limits.outputBytes", Rule::OutputAboveMaximum);
                }
            }
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(SpecError::Invalid {
                id: spec.id.clone(),
                violations: out,
            })
        }
    }
}

/// The rule `id` breaks, if any.
fn id_rule(id: &str) -> Option<Rule> {
    let bytes = id.as_bytes();
    let Some(first) = bytes.first() else {
        return Some(Rule::Empty);
    };
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if bytes.len() > MAX_ID_LEN || !first.is_ascii_alphanumeric() || !bytes.iter().all(allowed) {
        return Some(Rule::MalformedId);
    }
    if id.contains("..") {
        return Some(Rule::DotDot);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(spec: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": "ExecutionCell",
            "spec": spec,
        }))
        .unwrap()
    }

    fn violations(spec: serde_json::Value) -> Vec<(String, Rule)> {
        match ExecutionCellDocument::from_json(&json(spec)) {
            Err(SpecError::Invalid { violations, .. }) => {
                violations.into_iter().map(|v| (v.field, v.rule)).collect()
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_full_document_round_trips() {
        let raw = json(serde_json::json!({
            "id": "build-42",
            "authority": {
                "secretRefs": ["registry-token"],
                "egressRules": [{"host": "example.org", "port": 443}]
            },
            "lifetime": {"ttlSeconds": 60},
            "run": {
                "argv": ["/bin/echo", "hi"],
                "workingDirectory": "/tmp",
                "timeoutMs": 5000,
                "limits": {"outputBytes": 4096}
            },
            "placement": {"poolId": "amd64", "requires": {"requirements": [{"tag": "linux"}]}},
            "correlation": {"correlationId": "c-1", "runId": "r-1"}
        }));
        let doc = ExecutionCellDocument::from_json(&raw).unwrap();
        assert_eq!(doc.id(), "build-42");
        assert_eq!(doc.spec.run.as_ref().unwrap().argv[1], "hi");
        let again = ExecutionCellDocument::from_json(&doc.to_json()).unwrap();
        assert_eq!(again, doc);
    }

    #[test]
    fn an_unknown_field_is_named() {
        let raw = json(serde_json::json!({
            "id": "a", "lifetime": {"ttlSeconds": 1}, "colour": "blue"
        }));
        let err = ExecutionCellDocument::from_json(&raw).unwrap_err();
        assert!(
            matches!(&err, SpecError::Parse(m) if m.contains("colour")),
            "{err}"
        );
        let raw = json(serde_json::json!({
            "id": "a", "lifetime": {"ttlSeconds": 1, "ttlMinutes": 3}
        }));
        let err = ExecutionCellDocument::from_json(&raw).unwrap_err();
        assert!(err.to_string().contains("ttlMinutes"), "{err}");
    }

    #[test]
    fn every_rule_names_its_field() {
        assert_eq!(
            violations(serde_json::json!({"id": "", "lifetime": {"ttlSeconds": 0}})),
            vec![
                ("spec.id".into(), Rule::Empty),
                ("spec.lifetime.ttlSeconds".into(), Rule::Zero)
            ]
        );
        assert_eq!(
            violations(serde_json::json!({"id": "-x", "lifetime": {"ttlSeconds": 1}})),
            vec![("spec.id".into(), Rule::MalformedId)]
        );
        assert_eq!(
            violations(serde_json::json!({"id": "a..b", "lifetime": {"ttlSeconds": 1}})),
            vec![("spec.id".into(), Rule::DotDot)]
        );
        assert_eq!(
            violations(serde_json::json!({"id": "a/b", "lifetime": {"ttlSeconds": 1}})),
            vec![("spec.id".into(), Rule::MalformedId)]
        );
        let long = "a".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            violations(serde_json::json!({"id": long, "lifetime": {"ttlSeconds": 1}})),
            vec![("spec.id".into(), Rule::MalformedId)]
        );
        assert_eq!(
            violations(serde_json::json!({
                "id": "a", "lifetime": {"ttlSeconds": 1},
                "run": {"argv": []}
            })),
            vec![("spec.run.argv".into(), Rule::Empty)]
        );
        assert_eq!(
            violations(serde_json::json!({
                "id": "a", "lifetime": {"ttlSeconds": 1},
                "run": {"argv": ["/bin/true", "", "x\u{0}y"], "timeoutMs": 1001,
                        "limits": {"memoryBytes": 0}}
            })),
            vec![
                ("spec.run.argv[1]".into(), Rule::Empty),
                ("spec.run.argv[2]".into(), Rule::ContainsNul),
                ("spec.run.timeoutMs".into(), Rule::TimeoutBeyondTtl),
                ("spec.run.limits.memoryBytes".into(), Rule::Zero),
            ]
        );
    }

    #[test]
    fn the_longest_id_and_the_earlier_api_version_are_accepted() {
        let mut doc = ExecutionCellDocument::new(ExecutionCellSpec {
            id: "A".repeat(MAX_ID_LEN),
            authority: Authority::default(),
            lifetime: Lifetime { ttl_seconds: 1 },
            run: None,
            placement: None,
            correlation: None,
        });
        doc.validate().unwrap();
        doc.api_version = "cellos.io/v1".into();
        doc.validate().unwrap();
        doc.kind = "Cell".into();
        let err = doc.validate().unwrap_err();
        assert!(err.to_string().contains("kind must be"), "{err}");
    }

    #[test]
    fn oversized_and_garbage_input_is_an_error() {
        let big = vec![b' '; MAX_DOCUMENT_BYTES + 1];
        assert!(matches!(
            ExecutionCellDocument::from_json(&big),
            Err(SpecError::TooLarge(_))
        ));
        assert!(matches!(
            ExecutionCellDocument::from_json(b"\xff{"),
            Err(SpecError::Parse(_))
        ));
    }
}
