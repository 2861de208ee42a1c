//! The [`Milter`] trait: one method per libmilter callback.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::Poll;

use async_trait::async_trait;
use bitflags::bitflags;
use bytes::Bytes;
use milter_proto::{Actions, Connect, Envelope, Header, MacroStage, OptNeg, SmtpReply};

use crate::context::{Context, EomContext};

/// Errors a callback may return. Any error becomes the server's failure
/// policy reply (tempfail by default) and is logged once.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a callback returns: its future, boxed. An `async fn` of an
/// `#[async_trait] impl Milter` is turned into a method returning this.
pub type CallbackFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'a>>;

/// The decision of a callback a filter does not implement: continue (or
/// nothing to report, for `abort` and `close`).
trait DefaultDecision {
    fn decision() -> Self;
}

impl DefaultDecision for Status {
    fn decision() -> Self {
        Status::Continue
    }
}

impl DefaultDecision for () {
    fn decision() -> Self {}
}

/// The future of a callback a filter does not implement: it decides at
/// once. It takes no room, so boxing it allocates nothing; an `async`
/// block would hold the callback's arguments, and cost an allocation on
/// every call of every stage a filter leaves to the default.
struct Decided<T>(PhantomData<fn() -> T>);

impl<T: DefaultDecision> Future for Decided<T> {
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(T::decision()))
    }
}

/// A default callback's future.
fn decided<'a, T: DefaultDecision + 'a>() -> CallbackFuture<'a, T> {
    Box::pin(Decided(PhantomData))
}

/// What a callback decides (libmilter's `sfsistat`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Go on to the next stage.
    #[doc(alias = "SMFIS_CONTINUE")]
    Continue,
    /// Accept: at CONNECT/HELO the whole connection, later the whole message
    /// (even at RCPT). No more callbacks for it.
    #[doc(alias = "SMFIS_ACCEPT")]
    Accept,
    /// Reject with the MTA's default 5xx reply. At RCPT only that recipient.
    #[doc(alias = "SMFIS_REJECT")]
    Reject,
    /// Temporary failure with the MTA's default 4xx reply. At RCPT only that
    /// recipient.
    #[doc(alias = "SMFIS_TEMPFAIL")]
    Tempfail,
    /// Accept the message and throw it away.
    #[doc(alias = "SMFIS_DISCARD")]
    Discard,
    /// Stop sending this kind of event (body chunks); needs the MTA's
    /// `SMFIP_SKIP`, otherwise it is sent as CONTINUE.
    #[doc(alias = "SMFIS_SKIP")]
    Skip,
    /// Reject (5xx) or tempfail (4xx) with this reply
    /// (`smfi_setreply` + `SMFIS_REJECT`/`SMFIS_TEMPFAIL`).
    #[doc(alias = "smfi_setreply")]
    #[doc(alias = "smfi_setmlreply")]
    Reply(SmtpReply),
}

bitflags! {
    /// The callbacks a filter implements. Stages not listed are negotiated
    /// away (`SMFIP_NO*`): the MTA does not even send them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Stages: u16 {
        /// [`Milter::connect`].
        const CONNECT = 1 << 0;
        /// [`Milter::helo`].
        const HELO = 1 << 1;
        /// [`Milter::envfrom`].
        const MAIL = 1 << 2;
        /// [`Milter::envrcpt`].
        const RCPT = 1 << 3;
        /// [`Milter::data`].
        const DATA = 1 << 4;
        /// [`Milter::header`].
        const HEADER = 1 << 5;
        /// [`Milter::eoh`].
        const EOH = 1 << 6;
        /// [`Milter::body`].
        const BODY = 1 << 7;
        /// [`Milter::unknown`].
        const UNKNOWN = 1 << 8;
    }
}

/// What a filter asks for at negotiation (`smfiDesc.xxfi_flags`,
/// `smfi_setsymlist`, and the protocol word of `xxfi_negotiate`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// Actions used at end of message (`SMFIF_*`). A modification whose
    /// action is missing here is an [`crate::ActionError`].
    pub actions: Actions,
    /// Callbacks implemented; the others are negotiated away. Default: all.
    pub stages: Stages,
    /// Stages whose callbacks never decide anything: the MTA is told not to
    /// wait for a reply (`SMFIP_NR_*`), which saves a round trip each. A
    /// decision returned there is logged and dropped, as libmilter does.
    pub no_reply: Stages,
    /// Macros wanted per stage, space separated (`smfi_setsymlist`).
    pub macros: Vec<(MacroStage, String)>,
    /// Ask for header values verbatim, leading space included
    /// (`SMFIP_HDR_LEADSPC`; matters for DKIM `simple` canonicalisation).
    pub header_leading_space: bool,
    /// Ask to see recipients the MTA already rejected (`SMFIP_RCPT_REJ`).
    pub rejected_recipients: bool,
    /// Largest packet payload this filter accepts if the MTA offers more
    /// (`SMFIP_MDS_256K`/`1M`): 65535 (default), 262143 or 1048575.
    pub max_data_size: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            actions: Actions::empty(),
            stages: Stages::all(),
            no_reply: Stages::empty(),
            macros: Vec::new(),
            header_leading_space: false,
            rejected_recipients: false,
            max_data_size: milter_proto::frame::MAX_DATA_SIZE_64K,
        }
    }
}

impl Options {
    /// Default options: every stage, no actions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the actions used at end of message.
    pub fn actions(mut self, actions: Actions) -> Self {
        self.actions = actions;
        self
    }

    /// Sets the implemented stages; the others are negotiated away.
    pub fn stages(mut self, stages: Stages) -> Self {
        self.stages = stages;
        self
    }

    /// Sets the stages that never reply.
    pub fn no_reply(mut self, stages: Stages) -> Self {
        self.no_reply = stages;
        self
    }

    /// Requests macros for a stage, e.g. `(MacroStage::Rcpt, "{rcpt_addr} i")`.
    pub fn macros(mut self, stage: MacroStage, names: &str) -> Self {
        self.macros.retain(|(s, _)| *s != stage);
        self.macros.push((stage, names.to_string()));
        self
    }
}

/// A mail filter: one value per milter connection, made by the server's
/// factory, with one method per libmilter callback. Every method has a
/// default that continues, so a filter implements only what it needs — and
/// should list those stages in [`Options::stages`] so that the MTA does not
/// send the rest. (A default decides at once and allocates nothing; the
/// defaults are written out as the methods `#[async_trait]` makes of an
/// `async fn`, which is why the documentation shows them so.)
///
/// Per-message state lives in [`Milter::Message`]: the server creates it
/// (`Default`) when a message starts and drops it at end of message, ABORT,
/// QUIT_NC or when a decision ends the message, so nothing leaks into the
/// next message. Per-connection state lives in `self`.
///
/// The trait is object safe for a fixed `Message` type; [`crate::Chain`]
/// runs several filters of different types in one process.
///
/// ```
/// use milter_server::{async_trait, BoxError, Context, Milter, Options, Stages, Status};
/// use milter_proto::Envelope;
///
/// /// Refuses mail from one sender.
/// struct Block;
///
/// #[async_trait]
/// impl Milter for Block {
///     type Message = ();
///     async fn negotiate(&mut self, _: &milter_proto::OptNeg) -> Result<milter_server::Options, BoxError> {
///         Ok(Options::new().stages(Stages::MAIL))
///     }
///     async fn envfrom(&mut self, _: &Context<'_>, _: &mut (), from: &Envelope) -> Result<Status, BoxError> {
///         Ok(if from.address.as_ref() == b"<spam@example.com>" { Status::Reject } else { Status::Continue })
///     }
/// }
/// ```
#[async_trait]
#[allow(unused_variables)] // default methods ignore their arguments
pub trait Milter: Send {
    /// Per-message state, created when a message starts.
    type Message: Default + Send + 'static;

    /// Option negotiation: what this filter needs. Called once per
    /// connection with the MTA's offer.
    #[doc(alias = "xxfi_negotiate")]
    async fn negotiate(&mut self, offer: &OptNeg) -> Result<Options, BoxError> {
        Ok(Options::default())
    }

    /// The SMTP client connected.
    #[doc(alias = "xxfi_connect")]
    fn connect<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 mut self,
        ctx: &'life1 Context<'life2>,
        client: &'life3 Connect,
    ) -> CallbackFuture<'async_trait, Status>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        decided()
    }

    /// HELO/EHLO.
    #[doc(alias = "xxfi_helo")]
    fn helo<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 mut self,
        ctx: &'life1 Context<'life2>,
        name: &'life3 Bytes,
    ) -> CallbackFuture<'async_trait, Status>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        decided()
    }

    /// MAIL FROM: a message starts.
    #[doc(alias = "xxfi_envfrom")]
    fn envfrom<'life0, 'life1, 'life2, 'life3, 'life4, 'async_trait>(
        &'life0 mut self,
        ctx: &'life1 Context<'life2>,
        msg: &'life3 mut Self::Message,
        from: &'life4 Envelope,
    ) -> CallbackFuture<'async_trait, Status>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        'life4: 'async_trait,
        Self: 'async_trait,
    {
        decided()
    }

    /// RCPT TO, once per recipient.
    #[doc(alias = "xxfi_envrcpt")]
    fn envrcpt<'life0, 'life1, 'life2, 'life3, 'life4, 'async_trait>(
        &'life0 mut self,
        ctx: &'life1 Context<'life2>,
        msg: &'life3 mut Self::Message,
        rcpt: &'life4 Envelope,
    ) -> CallbackFuture<'async_trait, Status>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        'life4: 'async_trait,
        Self: 'async_trait,
    {
        decided()
    }

    /// DATA.
    #[doc(alias = "xxfi_data")]
    fn data<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 mut self,
        ctx: &'life1 Context<'life2>,
        msg: &'life3 mut Self::Message,
    ) -> CallbackFuture<'async_trait, Status>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        decided()
    }

    /// One header.
    #[doc(alias = "xxfi_header")]
    fn header<'life0, 'life1, 'life2, 'life3, 'life4, 'async_trait>(
        &'life0 mut self,
        ctx: &'life1 Context<'life2>,
        msg: &'life3 mut Self::Message,
        header: &'life4 Header,
    ) -> CallbackFuture<'async_trait, Status>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        'life4: 'async_trait,
        Self: 'async_trait,
    {
        decided()
    }

    /// End of headers.
    #[doc(alias = "xxfi_eoh")]
    fn eoh<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 mut self,
        ctx: &'life1 Context<'life2>,
        msg: &'life3 mut Self::Message,
    ) -> CallbackFuture<'async_trait, Status>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        decided()
    }

    /// A body chunk (CRLF line ends; lines may be split between chunks).
    #[doc(alias = "xxfi_body")]
    fn body<'life0, 'life1, 'life2, 'life3, 'life4, 'async_trait>(
        &'life0 mut self,
        ctx: &'life1 Context<'life2>,
        msg: &'life3 mut Self::Message,
        chunk: &'life4 Bytes,
    ) -> CallbackFuture<'async_trait, Status>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        'life4: 'async_trait,
        Self: 'async_trait,
    {
        decided()
    }

    /// End of message: the only place where the message can be modified.
    /// Returning [`Status::Continue`] accepts the message.
    #[doc(alias = "xxfi_eom")]
    fn eom<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 mut self,
        ctx: &'life1 mut EomContext<'life2>,
        msg: &'life3 mut Self::Message,
    ) -> CallbackFuture<'async_trait, Status>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        decided()
    }

    /// The message was aborted (only called inside a message). The message
    /// state is handed over and dropped afterwards.
    #[doc(alias = "xxfi_abort")]
    fn abort<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 mut self,
        ctx: &'life1 Context<'life2>,
        msg: Self::Message,
    ) -> CallbackFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        decided()
    }

    /// An SMTP command the MTA did not recognise.
    #[doc(alias = "xxfi_unknown")]
    fn unknown<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 mut self,
        ctx: &'life1 Context<'life2>,
        line: &'life3 Bytes,
    ) -> CallbackFuture<'async_trait, Status>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        decided()
    }

    /// The SMTP session ended (QUIT, QUIT_NC, or the connection was lost).
    #[doc(alias = "xxfi_close")]
    fn close<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 mut self,
        ctx: &'life1 Context<'life2>,
    ) -> CallbackFuture<'async_trait, ()>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        decided()
    }
}

/// Boxed filters are filters (with the same message type).
#[async_trait]
impl<M: Milter + ?Sized> Milter for Box<M> {
    type Message = M::Message;
    async fn negotiate(&mut self, offer: &OptNeg) -> Result<Options, BoxError> {
        (**self).negotiate(offer).await
    }
    async fn connect(&mut self, ctx: &Context<'_>, client: &Connect) -> Result<Status, BoxError> {
        (**self).connect(ctx, client).await
    }
    async fn helo(&mut self, ctx: &Context<'_>, name: &Bytes) -> Result<Status, BoxError> {
        (**self).helo(ctx, name).await
    }
    async fn envfrom(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut Self::Message,
        from: &Envelope,
    ) -> Result<Status, BoxError> {
        (**self).envfrom(ctx, msg, from).await
    }
    async fn envrcpt(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut Self::Message,
        rcpt: &Envelope,
    ) -> Result<Status, BoxError> {
        (**self).envrcpt(ctx, msg, rcpt).await
    }
    async fn data(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut Self::Message,
    ) -> Result<Status, BoxError> {
        (**self).data(ctx, msg).await
    }
    async fn header(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut Self::Message,
        header: &Header,
    ) -> Result<Status, BoxError> {
        (**self).header(ctx, msg, header).await
    }
    async fn eoh(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut Self::Message,
    ) -> Result<Status, BoxError> {
        (**self).eoh(ctx, msg).await
    }
    async fn body(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut Self::Message,
        chunk: &Bytes,
    ) -> Result<Status, BoxError> {
        (**self).body(ctx, msg, chunk).await
    }
    async fn eom(
        &mut self,
        ctx: &mut EomContext<'_>,
        msg: &mut Self::Message,
    ) -> Result<Status, BoxError> {
        (**self).eom(ctx, msg).await
    }
    async fn abort(&mut self, ctx: &Context<'_>, msg: Self::Message) -> Result<(), BoxError> {
        (**self).abort(ctx, msg).await
    }
    async fn unknown(&mut self, ctx: &Context<'_>, line: &Bytes) -> Result<Status, BoxError> {
        (**self).unknown(ctx, line).await
    }
    async fn close(&mut self, ctx: &Context<'_>) -> Result<(), BoxError> {
        (**self).close(ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A callback left to its default must cost no allocation: its future
    /// takes no room, and it decides on its first poll.
    #[test]
    fn default_callbacks_decide_at_once_from_nothing() {
        assert_eq!(std::mem::size_of::<Decided<Status>>(), 0);
        assert_eq!(std::mem::size_of::<Decided<()>>(), 0);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut fut = decided::<Status>();
        assert!(matches!(
            fut.as_mut().poll(&mut cx),
            Poll::Ready(Ok(Status::Continue))
        ));
        let mut fut = decided::<()>();
        assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
    }
}
