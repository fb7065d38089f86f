//! Reading a cell's output from the node that hosts it, in chunks small
//! enough for one cell message each.

use bytes::BytesMut;

use crate::cell::backend::{CellError, CellOutput};
use crate::cell::remote::command::{Command, Reply};
use crate::cell::remote::CellClient;

/// Raw bytes per chunk and stream (base64 makes them 4/3 larger, well
/// under the message limit).
pub(crate) const CHUNK_BYTES: u64 = 1 << 20;

/// Reads the whole output of cell `id` from its daemon `origin`.
pub(super) async fn fetch(
    client: &CellClient,
    id: &str,
    origin: u64,
) -> Result<CellOutput, CellError> {
    let (mut out, mut err) = (BytesMut::new(), BytesMut::new());
    loop {
        let command = Command::Output {
            stdout_from: out.len() as u64,
            stderr_from: err.len() as u64,
            max: CHUNK_BYTES,
        };
        let Reply::Output {
            chunk,
            stdout_len,
            stderr_len,
        } = client.call_ok(id, origin, &command).await?
        else {
            return Err(CellError::Remote {
                id: id.to_string(),
                reason: "unexpected answer to an output read".into(),
            });
        };
        if chunk.stdout.is_empty() && chunk.stderr.is_empty() {
            // Nothing more (or the files shrank under us: a new cell).
            let _ = (stdout_len, stderr_len);
            return Ok(CellOutput {
                stdout: out.freeze(),
                stderr: err.freeze(),
                ..*chunk
            });
        }
        out.extend_from_slice(&chunk.stdout);
        err.extend_from_slice(&chunk.stderr);
        if out.len() as u64 >= stdout_len && err.len() as u64 >= stderr_len {
            return Ok(CellOutput {
                stdout: out.freeze(),
                stderr: err.freeze(),
                ..*chunk
            });
        }
    }
}
