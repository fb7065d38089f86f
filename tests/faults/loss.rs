//! 1 MiB states migrated at 5, 10 and 20 % loss each way (64 MiB:
//! `faults_slow.rs`).

use std::time::Duration;

use super::lossy::lossy_migration;

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_at_5_percent_loss() {
    lossy_migration(0.05, 1 << 20, DEADLINE, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_at_10_percent_loss() {
    lossy_migration(0.10, 1 << 20, DEADLINE, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_at_20_percent_loss() {
    lossy_migration(0.20, 1 << 20, DEADLINE, 20).await;
}
