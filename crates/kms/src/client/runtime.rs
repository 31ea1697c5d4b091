//! The client's own runtime: a current-thread tokio runtime driven by a dedicated thread, so
//! that synchronous callers (inside other runtimes or not) only ever wait on a channel.

use std::io;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The runtime thread. Dropping the last reference stops it (in-flight calls cannot exist
/// then: each holds a reference).
#[derive(Debug)]
pub(crate) struct ClientRuntime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl ClientRuntime {
    /// Starts the thread and waits until its runtime exists.
    pub(crate) fn start() -> io::Result<Arc<Self>> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("coffer-kms-client".to_owned())
            .spawn(move || {
                // Built and dropped on this thread, never inside a caller's runtime.
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = handle_tx.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = stop_rx.await;
                        });
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                    }
                }
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| io::Error::other("the KMS client's runtime thread exited at start"))??;
        Ok(Arc::new(Self {
            handle,
            stop: Some(stop_tx),
        }))
    }

    /// The runtime's handle (to spawn calls and to create channels in its context).
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for ClientRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
