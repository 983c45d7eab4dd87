//! The optional access log (`gateway.access_log`): one JSON line per call, written by a thread
//! of its own through a buffer, so a serving thread only formats the line and hands it over.
//! When the writer cannot keep up, lines are dropped and counted, never waited for.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

/// Lines waiting for the writer at most.
const QUEUE: usize = 65_536;

pub struct AccessLog {
    tx: SyncSender<String>,
    pub dropped: AtomicU64,
    target: PathBuf,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("target", &self.target)
            .finish()
    }
}

impl AccessLog {
    /// Appends to `target`, or writes to standard output for `-`.
    pub fn open(target: &Path) -> std::io::Result<Arc<AccessLog>> {
        let out: Box<dyn Write + Send> = if target == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)?,
            )
        };
        let (tx, rx) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("peage-access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(line.as_bytes());
                    // Flush whenever the queue runs dry: lines are out within moments.
                    while let Ok(line) = rx.try_recv() {
                        let _ = out.write_all(line.as_bytes());
                    }
                    let _ = out.flush();
                }
                let _ = out.flush();
            })?;
        Ok(Arc::new(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
            target: target.to_path_buf(),
        }))
    }

    /// Queues one line (ending in a newline); dropped and counted when the queue is full.
    pub fn write(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What one access-log line says about a call.
#[derive(serde::Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub trace_id: String,
    pub span_id: String,
    pub method: &'a str,
    /// The path without its query (which may hold secrets).
    pub path: &'a str,
    pub status: u16,
    /// Until the answer's head, in milliseconds (the body streams on).
    pub ms: f64,
    pub peer: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partner_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<&'a str>,
    pub gateway_id: &'a str,
}

impl Entry<'_> {
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}
