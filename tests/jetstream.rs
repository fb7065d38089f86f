//! The JetStream round trip: a node's cell events published to a stream,
//! and the node projection rebuilt from it. Needs the `jetstream` feature
//! and a NATS server with JetStream at `CELLMESH_NATS_URL` (`.ci/run`
//! starts one on loopback).
#![cfg(feature = "jetstream")]

use cellmesh::cell::{JetStreamConfig, JetStreamLog};

#[path = "cells/support.rs"]
#[allow(dead_code)]
mod support;
use support::{destroy_and_wait, process_node, run_script, WAIT};

#[tokio::test]
async fn events_round_trip_through_jetstream() {
    let url = std::env::var("CELLMESH_NATS_URL")
        .expect("set CELLMESH_NATS_URL to a NATS server with JetStream (see .ci/run)");
    let config = JetStreamConfig {
        url,
        stream: format!("CELLMESH_TEST_{}", std::process::id()),
        subject_prefix: format!("cellmesh.events.test{}", std::process::id()),
    };
    let sink = JetStreamLog::connect(config.clone())
        .await
        .expect("connect");

    let (_rt, cells) = process_node("jetstream").await;
    cells.publish_to(sink.clone());
    for (id, script) in [("js-1", "exit 0"), ("js-2", "exit 5")] {
        run_script(&cells, id, script).await;
    }
    destroy_and_wait(&cells, "js-1").await;
    let last = cells.log().last_cursor().unwrap();
    assert_eq!(last, 5);
    assert!(cells.wait_published(last, WAIT).await, "publisher stalled");
    assert_eq!(cells.published_cursor().unwrap(), last);

    // A fresh reader rebuilds exactly the node's projection from the stream.
    let reader = JetStreamLog::connect(config).await.expect("connect reader");
    let replayed = reader.replay().await.unwrap();
    // The same records (the replaying reader is no node: it has no "here").
    let records = |view: &cellmesh::cell::NodeCellProjection| {
        let mut all: Vec<_> = view.cells().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    };
    assert_eq!(records(&replayed), records(&cells.view()));
    assert_eq!(replayed.cursor(), 5);
    let events = reader.read_all().await.unwrap();
    assert_eq!(events.len(), 5);
    for ((_, from_stream), (_, local)) in events.iter().zip(cells.log().read_after(0, 10).unwrap())
    {
        assert_eq!(from_stream, &local);
    }
}
