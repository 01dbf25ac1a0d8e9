//! Process signals shared by the hub's and the agent's binaries.

/// Completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when
/// this is called, not when the future is first polled: call it before
/// announcing readiness, so that a signal sent right after the announcement is
/// a clean shutdown rather than the default kill (a test that sent SIGTERM as
/// soon as the hub printed its addresses saw the process killed).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        let recv = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = recv(term) => {},
            () = recv(int) => {},
        }
    }
}
