//! The node's Prometheus metrics.
//!
//! `prometheus-client` rather than `metrics` + an exporter: its metrics are
//! typed values the node owns (no global recorder, so two nodes embedded
//! in one process keep their own registries), a counter increment is one
//! relaxed atomic add, and text exposition is all a node needs.
//!
//! Gauges that mirror state the SDK already keeps (daemons hosted, peers
//! connected, cells by state, admissions refused, cell events appended)
//! are read when `/metrics` is scraped, so they cost nothing in between.
//! So are the delivery counters: the daemon runtime counts every event it
//! delivers or refuses ([`DaemonRuntime::counters`]), and [`Deliveries`]
//! reads them at scrape time, so refusals decided inside the SDK
//! (duplicates, a full migration gate, a daemon not here) are counted too.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use cellmesh::compute::DaemonRuntime;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::TypedMetric;

/// A `u64` counter.
pub(crate) type Counter64 = Counter<u64, AtomicU64>;

/// A `reason` label (bounded: error variant names).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct Reason {
    pub(crate) reason: String,
}

/// A `state` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct State {
    pub(crate) state: String,
}

/// Every metric of a node.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) daemons_hosted: Gauge,
    pub(crate) migrations_started: Counter64,
    pub(crate) migrations_succeeded: Counter64,
    pub(crate) migrations_failed: Family<Reason, Counter64>,
    pub(crate) migration_duration: Histogram,
    pub(crate) migration_blackout: Histogram,
    pub(crate) migrated_bytes: Counter64,
    pub(crate) peers_connected: Gauge,
    pub(crate) admissions_refused: Family<Reason, Gauge>,
    pub(crate) cells: Family<State, Gauge>,
    pub(crate) cell_events_appended: Counter64,
    /// The log cursor last folded into `cell_events_appended`.
    appended_seen: AtomicU64,
    pub(crate) drain_duration: Histogram,
    pub(crate) http_requests: Family<Reason, Counter64>,
    /// Upgrades this node took part in that committed (counted by both
    /// processes).
    pub(crate) upgrades: Counter64,
    /// Upgrades that ended without a commit (counted by the incumbent).
    pub(crate) upgrades_failed: Counter64,
    /// Daemons lost in upgrades (an incumbent that died before handing
    /// them over), counted by the successor.
    pub(crate) upgrade_daemons_lost: Counter64,
}

impl Metrics {
    /// Counts a migration that succeeded: its duration, blackout and bytes.
    pub(crate) fn record_migration(&self, report: &cellmesh::compute::MigrationReport) {
        self.migrations_succeeded.inc();
        self.migration_duration.observe(report.total.as_secs_f64());
        self.migration_blackout
            .observe(report.blackout.as_secs_f64());
        self.migrated_bytes.inc_by(report.snapshot_bytes);
    }

    /// Reads the delivery counters of `rt` at every scrape.
    pub(crate) fn collect_deliveries(&mut self, rt: &DaemonRuntime) {
        self.registry
            .register_collector(Box::new(Deliveries(rt.clone())));
    }

    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("cellmesh");
        let m = Self {
            daemons_hosted: Gauge::default(),
            migrations_started: Counter64::default(),
            migrations_succeeded: Counter64::default(),
            migrations_failed: Family::default(),
            migration_duration: Histogram::new(exponential_buckets(0.000_25, 4.0, 10)),
            migration_blackout: Histogram::new(exponential_buckets(0.000_05, 4.0, 10)),
            migrated_bytes: Counter64::default(),
            peers_connected: Gauge::default(),
            admissions_refused: Family::default(),
            cells: Family::default(),
            cell_events_appended: Counter64::default(),
            appended_seen: AtomicU64::new(0),
            drain_duration: Histogram::new(exponential_buckets(0.01, 3.0, 10)),
            http_requests: Family::default(),
            upgrades: Counter64::default(),
            upgrades_failed: Counter64::default(),
            upgrade_daemons_lost: Counter64::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "daemons_hosted",
            "Daemons hosted on this node",
            m.daemons_hosted.clone(),
        );
        r.register(
            "upgrades",
            "Binary upgrades of this node that committed",
            m.upgrades.clone(),
        );
        r.register(
            "upgrades_failed",
            "Binary upgrades of this node that ended without a commit (the node served on)",
            m.upgrades_failed.clone(),
        );
        r.register(
            "upgrade_daemons_lost",
            "Daemons lost because the previous process died before handing them over",
            m.upgrade_daemons_lost.clone(),
        );
        r.register(
            "migrations_started",
            "Migrations this node started (API and drain)",
            m.migrations_started.clone(),
        );
        r.register(
            "migrations_succeeded",
            "Migrations this node started that committed",
            m.migrations_succeeded.clone(),
        );
        r.register(
            "migrations_failed",
            "Migrations this node started that failed, by reason",
            m.migrations_failed.clone(),
        );
        r.register_with_unit(
            "migration_duration",
            "Migrations this node started (control plane and drains): start to end of blackout",
            Unit::Seconds,
            m.migration_duration.clone(),
        );
        r.register_with_unit(
            "migration_blackout",
            "Migrations this node started (control plane and drains): blackout",
            Unit::Seconds,
            m.migration_blackout.clone(),
        );
        r.register_with_unit(
            "migrated",
            "Snapshot bytes sent by migrations this node started (control plane and drains)",
            Unit::Bytes,
            m.migrated_bytes.clone(),
        );
        r.register(
            "peers_connected",
            "Peers with an admitted control link",
            m.peers_connected.clone(),
        );
        r.register(
            "admissions_refused",
            "Inbound connections refused at admission, by reason (a counter kept by the mesh)",
            m.admissions_refused.clone(),
        );
        r.register(
            "cells",
            "Cells in this node's log, by state",
            m.cells.clone(),
        );
        r.register(
            "cell_events_appended",
            "Signed cell events appended to this node's log",
            m.cell_events_appended.clone(),
        );
        r.register_with_unit(
            "drain_duration",
            "Drains of this node",
            Unit::Seconds,
            m.drain_duration.clone(),
        );
        r.register(
            "http_requests",
            "Control plane requests, by outcome class",
            m.http_requests.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts a failed migration under its error's variant name.
    pub(crate) fn migration_failed(&self, error: &cellmesh::compute::MigrateError) {
        self.migrations_failed
            .get_or_create(&Reason {
                reason: variant_name(error),
            })
            .inc();
    }

    /// Folds the log's cursor into the appended-events counter.
    pub(crate) fn observe_log_cursor(&self, cursor: u64) {
        let seen = self.appended_seen.fetch_max(cursor, Ordering::Relaxed);
        if cursor > seen {
            self.cell_events_appended.inc_by(cursor - seen);
        }
    }

    /// The text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The runtime's delivery counters, read at scrape time:
/// `cellmesh_events_delivered_total` and
/// `cellmesh_events_refused_total{reason}`.
#[derive(Debug)]
struct Deliveries(DaemonRuntime);

impl Collector for Deliveries {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let counters = self.0.counters();
        let delivered = ConstCounter::new(counters.delivered);
        let metric = encoder.encode_descriptor(
            "events_delivered",
            "Events processed by daemons hosted on this node",
            None,
            delivered.metric_type(),
        )?;
        delivered.encode(metric)?;
        let mut family = encoder.encode_descriptor(
            "events_refused",
            "Events refused by this node's daemon runtime, by reason",
            None,
            ConstCounter::<u64>::TYPE,
        )?;
        for (reason, n) in counters.refusals() {
            let label = Reason {
                reason: reason.to_string(),
            };
            ConstCounter::new(n).encode(family.encode_family(&label)?)?;
        }
        Ok(())
    }
}

/// `TargetUnreachable { .. }` → `target_unreachable`.
pub(crate) fn variant_name(error: &impl std::fmt::Debug) -> String {
    let debug = format!("{error:?}");
    let name: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    snake(&name)
}

/// `commandCompleted` or `CommandCompleted` → `command_completed`.
pub(crate) fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_snake_case() {
        assert_eq!(snake("commandCompleted"), "command_completed");
        assert_eq!(snake("TargetUnreachable"), "target_unreachable");
        assert_eq!(variant_name(&Some(3)), "some");
    }

    #[test]
    fn exposition_has_the_prefix_and_units() {
        let m = Metrics::new();
        m.migrations_started.inc();
        m.observe_log_cursor(5);
        m.observe_log_cursor(3);
        let text = m.encode();
        assert!(
            text.contains("cellmesh_migrations_started_total 1"),
            "{text}"
        );
        assert!(
            text.contains("cellmesh_cell_events_appended_total 5"),
            "{text}"
        );
        assert!(
            text.contains("cellmesh_drain_duration_seconds_count 0"),
            "{text}"
        );
    }
}
