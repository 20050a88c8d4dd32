//! One shutdown signal for every task of a service (as in mini-redis): each task
//! holds a [`Shutdown`] and stops taking new work when it fires, then flushes.

use tokio::sync::watch;

/// A cloneable handle that tells tasks to stop.
#[derive(Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// The sending side, held by `main`.
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

/// A new trigger and the handle its tasks wait on.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger { sender }, Shutdown { receiver })
}

impl ShutdownTrigger {
    /// Tells every task to stop.
    pub fn trigger(&self) {
        let _ = self.sender.send(true);
    }
}

impl Shutdown {
    /// True once shutdown was asked for.
    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves when shutdown is asked for (or the trigger is gone).
    pub async fn wait(mut self) {
        let _ = self.receiver.wait_for(|stop| *stop).await;
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
