//! Sessions of the module's directives counted by kind in its metrics
//! (`nginx_websocket_sessions_active` and `_total{kind}`, and the close
//! codes), through the public [`Handler::finish`] and
//! [`RelayHandler::finish`]: [`serve`](crate::serve()) and
//! [`Relaying::serve`](crate::Relaying::serve) count no kind themselves.

use crate::metrics::{self, Kind};
use crate::{Context, Handler, Next, RelayContext, RelayHandler, RelayNext, Stats};

/// A handler counted as a session of `kind` from its making until it is
/// dropped, with the close code its session ended with.
pub struct Counted<H> {
    kind: Kind,
    /// The client's close code, once the session finished.
    close_code: Option<u16>,
    inner: H,
}

impl<H> Counted<H> {
    /// Counts a session of `kind` served by `inner` as started.
    pub fn new(kind: Kind, inner: H) -> Counted<H> {
        metrics::session_started(kind);
        Counted {
            kind,
            close_code: None,
            inner,
        }
    }
}

impl<H> Drop for Counted<H> {
    fn drop(&mut self) {
        metrics::session_ended(self.kind, self.close_code);
    }
}

impl<H: Handler> Handler for Counted<H> {
    fn step(&mut self, cx: &mut Context<'_>) -> Next {
        self.inner.step(cx)
    }

    fn shut_down(&mut self, cx: &mut Context<'_>) {
        self.inner.shut_down(cx)
    }

    fn closing(&mut self) {
        self.inner.closing()
    }

    fn finish(&mut self, stats: &Stats) {
        self.close_code = stats.close_code;
        self.inner.finish(stats)
    }
}

impl<H: RelayHandler> RelayHandler for Counted<H> {
    fn step(&mut self, cx: &mut RelayContext<'_>) -> RelayNext {
        self.inner.step(cx)
    }

    fn finish(&mut self, stats: &Stats) {
        self.close_code = stats.close_code;
        self.inner.finish(stats)
    }
}
