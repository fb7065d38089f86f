//! The router and the connection pool on their own: a protocol registered
//! by a test, no compute layer involved.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::mesh::{Context, DialError, Mesh, MeshBuilder, ProtocolHandler, Serving};
use crate::NodeId;

const ECHO: &[u8] = b"test/echo/1";

/// Echoes every stream back, and counts the connections it served.
#[derive(Default)]
struct Echo {
    served: AtomicUsize,
}

impl ProtocolHandler for Echo {
    fn accept(self: Arc<Self>, mesh: Context, conn: quinn::Connection, _peer: NodeId) -> Serving {
        self.served.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                mesh.spawn(async move {
                    if let Ok(bytes) = recv.read_to_end(1 << 16).await {
                        let _ = send.write_all(&bytes).await;
                        let _ = send.finish();
                    }
                });
            }
        })
    }
}

async fn pair() -> (Mesh, Mesh) {
    let a = MeshBuilder::new("127.0.0.1:0", &[5u8; 32])
        .unwrap()
        .build()
        .await
        .unwrap();
    let b = MeshBuilder::new("127.0.0.1:0", &[5u8; 32])
        .unwrap()
        .build()
        .await
        .unwrap();
    a.connect(b.local_addr()).await.unwrap();
    (a, b)
}

async fn echo(conn: &quinn::Connection, text: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(text).await.unwrap();
    send.finish().unwrap();
    recv.read_to_end(1 << 16).await.unwrap()
}

#[tokio::test]
async fn a_registered_protocol_is_served_over_one_pooled_connection() {
    let (a, b) = pair().await;
    let handler = Arc::new(Echo::default());
    let registered = Arc::clone(&handler);
    b.register_protocol(ECHO, move || registered);

    // Eight first users at once: one dial, one connection.
    let a = Arc::new(a);
    let mut users = Vec::new();
    for i in 0..8u8 {
        let a = Arc::clone(&a);
        let to = b.node_id();
        users.push(tokio::spawn(async move {
            let conn = a.connection(to, ECHO).await.unwrap();
            assert_eq!(echo(&conn, &[i; 3]).await, vec![i; 3]);
            conn.stable_id()
        }));
    }
    let mut ids = Vec::new();
    for user in users {
        ids.push(user.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one connection for all users");
    assert_eq!(handler.served.load(Ordering::SeqCst), 1);

    // A forgotten connection is dialled again, once.
    let conn = a.pooled(b.node_id(), ECHO).unwrap();
    a.forget_connection(b.node_id(), ECHO, &conn);
    let again = a.connection(b.node_id(), ECHO).await.unwrap();
    assert_ne!(again.stable_id(), conn.stable_id());
    assert_eq!(echo(&again, b"x").await, b"x");
    assert_eq!(handler.served.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_protocol_nobody_registered_is_refused_in_the_handshake() {
    let (a, b) = pair().await;
    let err = a.connection(b.node_id(), ECHO).await.unwrap_err();
    assert!(matches!(err, DialError::NotServed { .. }), "{err:?}");

    // Registered later, it is offered from then on.
    b.register_protocol(ECHO, || Arc::new(Echo::default()));
    let conn = tokio::time::timeout(Duration::from_secs(10), a.connection(b.node_id(), ECHO))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echo(&conn, b"late").await, b"late");
}

#[tokio::test]
async fn registering_twice_keeps_the_first_handler() {
    let (_a, b) = pair().await;
    let first: Arc<dyn ProtocolHandler> = Arc::new(Echo::default());
    let kept = Arc::clone(&first);
    b.register_protocol(ECHO, move || kept);
    let again = b.register_protocol(ECHO, || Arc::new(Echo::default()));
    assert!(Arc::ptr_eq(&again, &first));
}
