//! inspect: logs every callback with its arguments and the macros the MTA
//! sent — the tool to see what your MTA really tells a milter.
//!
//! ```text
//! RUST_LOG=info inspect --listen unix:/tmp/inspect.sock --socket-mode 666
//! ```

use bytes_text::show;
use clap::Parser;
use milter_examples::{ListenArgs, init_logging, serve};
use milter_proto::{Connect, Envelope, Header, MacroStage, OptNeg};
use milter_server::{BoxError, Context, EomContext, Milter, Options, Status, async_trait};
use tracing::info;

/// Command line.
#[derive(Parser)]
#[command(about = "A milter that logs every callback and macro, and accepts everything")]
struct Args {
    #[command(flatten)]
    listen: ListenArgs,
}

/// Counts per message what it saw, to log a summary at the end.
#[derive(Default)]
struct Seen {
    recipients: usize,
    headers: usize,
    body_bytes: usize,
}

struct Inspect;

/// The macros visible now, as `name=value` pairs. A name defined at
/// several stages is shown once, with the value a filter would get.
fn macros(ctx: &Context<'_>) -> String {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for (name, value) in ctx.macros().iter() {
        if !seen.contains(&name) {
            out.push(format!("{}={}", show(&name), show(&value)));
            seen.push(name);
        }
    }
    out.join(" ")
}

/// Text helpers: bytes from the wire are not always UTF-8.
mod bytes_text {
    /// Shows bytes as text, escaping what is not printable UTF-8.
    pub(crate) fn show(b: &[u8]) -> String {
        String::from_utf8_lossy(b).escape_debug().to_string()
    }
}

#[async_trait]
impl Milter for Inspect {
    type Message = Seen;

    async fn negotiate(&mut self, offer: &OptNeg) -> Result<Options, BoxError> {
        info!(version = offer.version, actions = ?offer.actions, protocol = ?offer.protocol, "negotiate");
        // Ask for a few macros Postfix and Sendmail do not send by default.
        Ok(Options::new()
            .macros(
                MacroStage::Connect,
                "j _ {daemon_name} {client_addr} {client_name}",
            )
            .macros(MacroStage::Mail, "i {auth_authen} {auth_type} {mail_addr}")
            .macros(MacroStage::Rcpt, "i {rcpt_addr} {rcpt_host} {rcpt_mailer}")
            .macros(MacroStage::EndOfMessage, "i {msg_id}"))
    }

    async fn connect(&mut self, ctx: &Context<'_>, client: &Connect) -> Result<Status, BoxError> {
        info!(host = %show(&client.hostname), address = ?client.address, macros = %macros(ctx), "connect");
        Ok(Status::Continue)
    }

    async fn helo(&mut self, ctx: &Context<'_>, name: &bytes::Bytes) -> Result<Status, BoxError> {
        info!(helo = %show(name), macros = %macros(ctx), "helo");
        Ok(Status::Continue)
    }

    async fn envfrom(
        &mut self,
        ctx: &Context<'_>,
        _: &mut Seen,
        from: &Envelope,
    ) -> Result<Status, BoxError> {
        let args: Vec<String> = from.args().map(|a| show(&a)).collect();
        info!(from = %show(&from.address), ?args, macros = %macros(ctx), "mail");
        Ok(Status::Continue)
    }

    async fn envrcpt(
        &mut self,
        ctx: &Context<'_>,
        seen: &mut Seen,
        rcpt: &Envelope,
    ) -> Result<Status, BoxError> {
        seen.recipients += 1;
        info!(rcpt = %show(&rcpt.address), macros = %macros(ctx), "rcpt");
        Ok(Status::Continue)
    }

    async fn data(&mut self, ctx: &Context<'_>, _: &mut Seen) -> Result<Status, BoxError> {
        info!(macros = %macros(ctx), "data");
        Ok(Status::Continue)
    }

    async fn header(
        &mut self,
        _: &Context<'_>,
        seen: &mut Seen,
        h: &Header,
    ) -> Result<Status, BoxError> {
        seen.headers += 1;
        info!(name = %show(&h.name), value = %show(&h.value), "header");
        Ok(Status::Continue)
    }

    async fn eoh(&mut self, ctx: &Context<'_>, _: &mut Seen) -> Result<Status, BoxError> {
        info!(macros = %macros(ctx), "end of headers");
        Ok(Status::Continue)
    }

    async fn body(
        &mut self,
        _: &Context<'_>,
        seen: &mut Seen,
        chunk: &bytes::Bytes,
    ) -> Result<Status, BoxError> {
        seen.body_bytes += chunk.len();
        info!(bytes = chunk.len(), "body chunk");
        Ok(Status::Continue)
    }

    async fn eom(&mut self, ctx: &mut EomContext<'_>, seen: &mut Seen) -> Result<Status, BoxError> {
        info!(
            queue_id = ctx.queue_id().as_deref().unwrap_or("-"),
            recipients = seen.recipients,
            headers = seen.headers,
            body_bytes = seen.body_bytes,
            macros = %macros(ctx),
            "end of message"
        );
        Ok(Status::Continue)
    }

    async fn abort(&mut self, _: &Context<'_>, _: Seen) -> Result<(), BoxError> {
        info!("abort");
        Ok(())
    }

    async fn unknown(&mut self, _: &Context<'_>, line: &bytes::Bytes) -> Result<Status, BoxError> {
        info!(line = %show(line), "unknown command");
        Ok(Status::Continue)
    }

    async fn close(&mut self, _: &Context<'_>) -> Result<(), BoxError> {
        info!("close");
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging();
    serve(&args.listen, || Inspect).await
}
