//! Several filters in one process, in order — what
//! `InputMailFilters=regex,greylist` does in Sendmail.

use std::any::Any;

use async_trait::async_trait;
use bytes::Bytes;
use milter_proto::{Connect, Envelope, Header, MacroStage, OptNeg};

use crate::context::{Context, EomContext};
use crate::milter::{BoxError, Milter, Options, Stages, Status};

type AnyMessage = Box<dyn Any + Send>;

/// The object-safe face of any [`Milter`]: message state is boxed.
#[async_trait]
trait Erased: Send {
    fn new_message(&self) -> AnyMessage;
    async fn negotiate(&mut self, offer: &OptNeg) -> Result<Options, BoxError>;
    async fn connect(&mut self, ctx: &Context<'_>, client: &Connect) -> Result<Status, BoxError>;
    async fn helo(&mut self, ctx: &Context<'_>, name: &Bytes) -> Result<Status, BoxError>;
    async fn envfrom(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut AnyMessage,
        from: &Envelope,
    ) -> Result<Status, BoxError>;
    async fn envrcpt(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut AnyMessage,
        rcpt: &Envelope,
    ) -> Result<Status, BoxError>;
    async fn data(&mut self, ctx: &Context<'_>, msg: &mut AnyMessage) -> Result<Status, BoxError>;
    async fn header(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut AnyMessage,
        h: &Header,
    ) -> Result<Status, BoxError>;
    async fn eoh(&mut self, ctx: &Context<'_>, msg: &mut AnyMessage) -> Result<Status, BoxError>;
    async fn body(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut AnyMessage,
        chunk: &Bytes,
    ) -> Result<Status, BoxError>;
    async fn eom(
        &mut self,
        ctx: &mut EomContext<'_>,
        msg: &mut AnyMessage,
    ) -> Result<Status, BoxError>;
    async fn abort(&mut self, ctx: &Context<'_>, msg: AnyMessage) -> Result<(), BoxError>;
    async fn unknown(&mut self, ctx: &Context<'_>, line: &Bytes) -> Result<Status, BoxError>;
    async fn close(&mut self, ctx: &Context<'_>) -> Result<(), BoxError>;
}

fn downcast<T: 'static>(msg: &mut AnyMessage) -> Result<&mut T, BoxError> {
    msg.downcast_mut::<T>()
        .ok_or_else(|| "chain: message state of the wrong type".into())
}

#[async_trait]
impl<M: Milter> Erased for M
where
    M::Message: 'static,
{
    fn new_message(&self) -> AnyMessage {
        Box::new(M::Message::default())
    }
    async fn negotiate(&mut self, offer: &OptNeg) -> Result<Options, BoxError> {
        Milter::negotiate(self, offer).await
    }
    async fn connect(&mut self, ctx: &Context<'_>, client: &Connect) -> Result<Status, BoxError> {
        Milter::connect(self, ctx, client).await
    }
    async fn helo(&mut self, ctx: &Context<'_>, name: &Bytes) -> Result<Status, BoxError> {
        Milter::helo(self, ctx, name).await
    }
    async fn envfrom(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut AnyMessage,
        from: &Envelope,
    ) -> Result<Status, BoxError> {
        Milter::envfrom(self, ctx, downcast(msg)?, from).await
    }
    async fn envrcpt(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut AnyMessage,
        rcpt: &Envelope,
    ) -> Result<Status, BoxError> {
        Milter::envrcpt(self, ctx, downcast(msg)?, rcpt).await
    }
    async fn data(&mut self, ctx: &Context<'_>, msg: &mut AnyMessage) -> Result<Status, BoxError> {
        Milter::data(self, ctx, downcast(msg)?).await
    }
    async fn header(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut AnyMessage,
        h: &Header,
    ) -> Result<Status, BoxError> {
        Milter::header(self, ctx, downcast(msg)?, h).await
    }
    async fn eoh(&mut self, ctx: &Context<'_>, msg: &mut AnyMessage) -> Result<Status, BoxError> {
        Milter::eoh(self, ctx, downcast(msg)?).await
    }
    async fn body(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut AnyMessage,
        chunk: &Bytes,
    ) -> Result<Status, BoxError> {
        Milter::body(self, ctx, downcast(msg)?, chunk).await
    }
    async fn eom(
        &mut self,
        ctx: &mut EomContext<'_>,
        msg: &mut AnyMessage,
    ) -> Result<Status, BoxError> {
        Milter::eom(self, ctx, downcast(msg)?).await
    }
    async fn abort(&mut self, ctx: &Context<'_>, msg: AnyMessage) -> Result<(), BoxError> {
        match msg.downcast::<M::Message>() {
            Ok(msg) => Milter::abort(self, ctx, *msg).await,
            Err(_) => Err("chain: message state of the wrong type".into()),
        }
    }
    async fn unknown(&mut self, ctx: &Context<'_>, line: &Bytes) -> Result<Status, BoxError> {
        Milter::unknown(self, ctx, line).await
    }
    async fn close(&mut self, ctx: &Context<'_>) -> Result<(), BoxError> {
        Milter::close(self, ctx).await
    }
}

struct Link {
    filter: Box<dyn Erased>,
    stages: Stages,
    /// Accepted the connection at CONNECT or HELO: no more callbacks.
    done: bool,
}

/// Runs several filters on one milter connection, in order.
///
/// * Negotiation asks for the union of the filters' actions, stages and
///   macros; a stage is no-reply only if every filter that handles it says
///   so; header leading space and rejected recipients only if all ask.
/// * At each stage the filters that handle it run in order. The first
///   reject, tempfail, discard or custom reply is the answer and the rest
///   are not asked. An accept takes that filter out of the message (or of
///   the connection at CONNECT/HELO) and the others go on; when every filter
///   has accepted, the chain accepts.
/// * At end of message every filter still in runs, and all their
///   modifications are sent.
pub struct Chain {
    links: Vec<Link>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("filters", &self.links.len())
            .finish()
    }
}

impl Default for Chain {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-message state of a [`Chain`]: each filter's own, and who accepted.
#[derive(Default)]
pub struct ChainMessage {
    states: Vec<AnyMessage>,
    done: Vec<bool>,
}

impl std::fmt::Debug for ChainMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainMessage")
            .field("done", &self.done)
            .finish()
    }
}

impl Chain {
    /// An empty chain (it accepts everything).
    pub fn new() -> Self {
        Self { links: Vec::new() }
    }

    /// Appends a filter.
    pub fn push<M: Milter + 'static>(mut self, filter: M) -> Self
    where
        M::Message: 'static,
    {
        self.links.push(Link {
            filter: Box::new(filter),
            stages: Stages::all(),
            done: false,
        });
        self
    }

    fn ensure_states(&self, msg: &mut ChainMessage) {
        if msg.states.len() != self.links.len() {
            msg.states = self.links.iter().map(|l| l.filter.new_message()).collect();
            msg.done = vec![false; self.links.len()];
        }
    }

    /// Accepts the chain's status once no filter is left in.
    fn after_stage(&self, active: usize) -> Status {
        if active == 0 && !self.links.is_empty() {
            Status::Accept
        } else {
            Status::Continue
        }
    }
}

/// Runs one connection-level stage over the filters that are still in.
macro_rules! connection_stage {
    ($self:ident, $stage:expr, |$f:ident| $call:expr) => {{
        let mut active = 0;
        for link in $self.links.iter_mut() {
            if link.done {
                continue;
            }
            active += 1;
            if !link.stages.contains($stage) {
                continue;
            }
            let $f = &mut link.filter;
            match $call.await? {
                Status::Continue | Status::Skip => {}
                Status::Accept => {
                    link.done = true;
                    active -= 1;
                }
                decisive => return Ok(decisive),
            }
        }
        Ok($self.after_stage(active))
    }};
}

/// Runs one message-level stage over the filters still in the message.
macro_rules! message_stage {
    ($self:ident, $msg:ident, $stage:expr, |$f:ident, $m:ident| $call:expr) => {{
        $self.ensure_states($msg);
        let mut active = 0;
        for (i, link) in $self.links.iter_mut().enumerate() {
            if link.done || $msg.done.get(i).copied().unwrap_or(true) {
                continue;
            }
            active += 1;
            if !link.stages.contains($stage) {
                continue;
            }
            let Some($m) = $msg.states.get_mut(i) else {
                continue;
            };
            let $f = &mut link.filter;
            match $call.await? {
                Status::Continue | Status::Skip => {}
                Status::Accept => {
                    if let Some(d) = $msg.done.get_mut(i) {
                        *d = true;
                    }
                    active -= 1;
                }
                decisive => return Ok(decisive),
            }
        }
        Ok($self.after_stage(active))
    }};
}

#[async_trait]
impl Milter for Chain {
    type Message = ChainMessage;

    async fn negotiate(&mut self, offer: &OptNeg) -> Result<Options, BoxError> {
        let mut all = Options::default().stages(Stages::empty());
        let mut no_reply = Stages::all();
        let mut leading_space = true;
        let mut rejected = true;
        let mut macros: Vec<(MacroStage, Vec<String>)> = Vec::new();
        for link in &mut self.links {
            let o = link.filter.negotiate(offer).await?;
            link.stages = o.stages;
            all.actions |= o.actions;
            all.stages |= o.stages;
            // A stage is no-reply for the chain only if no handler of it replies.
            no_reply &= o.no_reply | !o.stages;
            leading_space &= o.header_leading_space;
            rejected &= o.rejected_recipients;
            all.max_data_size = all.max_data_size.min(o.max_data_size);
            for (stage, names) in o.macros {
                let entry = match macros.iter_mut().find(|(s, _)| *s == stage) {
                    Some(e) => e,
                    None => {
                        macros.push((stage, Vec::new()));
                        let last = macros.len() - 1;
                        &mut macros[last]
                    }
                };
                for name in names.split([' ', ',']).filter(|n| !n.is_empty()) {
                    if !entry.1.iter().any(|n| n == name) {
                        entry.1.push(name.to_string());
                    }
                }
            }
        }
        all.no_reply = no_reply & all.stages;
        all.header_leading_space = leading_space && !self.links.is_empty();
        all.rejected_recipients = rejected && !self.links.is_empty();
        all.macros = macros.into_iter().map(|(s, n)| (s, n.join(" "))).collect();
        Ok(all)
    }

    async fn connect(&mut self, ctx: &Context<'_>, client: &Connect) -> Result<Status, BoxError> {
        connection_stage!(self, Stages::CONNECT, |f| f.connect(ctx, client))
    }

    async fn helo(&mut self, ctx: &Context<'_>, name: &Bytes) -> Result<Status, BoxError> {
        connection_stage!(self, Stages::HELO, |f| f.helo(ctx, name))
    }

    async fn envfrom(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut ChainMessage,
        from: &Envelope,
    ) -> Result<Status, BoxError> {
        message_stage!(self, msg, Stages::MAIL, |f, m| f.envfrom(ctx, m, from))
    }

    async fn envrcpt(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut ChainMessage,
        rcpt: &Envelope,
    ) -> Result<Status, BoxError> {
        message_stage!(self, msg, Stages::RCPT, |f, m| f.envrcpt(ctx, m, rcpt))
    }

    async fn data(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut ChainMessage,
    ) -> Result<Status, BoxError> {
        message_stage!(self, msg, Stages::DATA, |f, m| f.data(ctx, m))
    }

    async fn header(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut ChainMessage,
        header: &Header,
    ) -> Result<Status, BoxError> {
        message_stage!(self, msg, Stages::HEADER, |f, m| f.header(ctx, m, header))
    }

    async fn eoh(&mut self, ctx: &Context<'_>, msg: &mut ChainMessage) -> Result<Status, BoxError> {
        message_stage!(self, msg, Stages::EOH, |f, m| f.eoh(ctx, m))
    }

    async fn body(
        &mut self,
        ctx: &Context<'_>,
        msg: &mut ChainMessage,
        chunk: &Bytes,
    ) -> Result<Status, BoxError> {
        message_stage!(self, msg, Stages::BODY, |f, m| f.body(ctx, m, chunk))
    }

    async fn eom(
        &mut self,
        ctx: &mut EomContext<'_>,
        msg: &mut ChainMessage,
    ) -> Result<Status, BoxError> {
        self.ensure_states(msg);
        for (i, link) in self.links.iter_mut().enumerate() {
            if link.done || msg.done.get(i).copied().unwrap_or(false) {
                continue;
            }
            let Some(state) = msg.states.get_mut(i) else {
                continue;
            };
            match link.filter.eom(ctx, state).await? {
                Status::Continue | Status::Skip | Status::Accept => {}
                decisive => return Ok(decisive),
            }
        }
        Ok(Status::Continue)
    }

    async fn abort(&mut self, ctx: &Context<'_>, msg: ChainMessage) -> Result<(), BoxError> {
        let mut first_error = None;
        for (link, state) in self.links.iter_mut().zip(msg.states) {
            if let Err(e) = link.filter.abort(ctx, state).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn unknown(&mut self, ctx: &Context<'_>, line: &Bytes) -> Result<Status, BoxError> {
        connection_stage!(self, Stages::UNKNOWN, |f| f.unknown(ctx, line))
    }

    async fn close(&mut self, ctx: &Context<'_>) -> Result<(), BoxError> {
        let mut first_error = None;
        for link in &mut self.links {
            link.done = false;
            if let Err(e) = link.filter.close(ctx).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
