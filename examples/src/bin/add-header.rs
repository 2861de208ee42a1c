//! add-header: adds one header to every message at end of message — the
//! shape of every milter that modifies mail.
//!
//! ```text
//! add-header --listen inet:7358@127.0.0.1 --name X-Scanned --value yes
//! ```

use clap::Parser;
use milter_examples::{ListenArgs, init_logging, serve};
use milter_proto::{Actions, OptNeg};
use milter_server::{BoxError, EomContext, Milter, Options, Stages, Status, async_trait};

/// Command line.
#[derive(Parser)]
#[command(about = "A milter that adds a header to every message")]
struct Args {
    #[command(flatten)]
    listen: ListenArgs,
    /// Name of the header to add.
    #[arg(long, default_value = "X-Milter")]
    name: String,
    /// Its value.
    #[arg(long, default_value = "seen")]
    value: String,
}

/// One per connection; the header is shared configuration.
struct AddHeader {
    name: std::sync::Arc<(String, String)>,
}

#[async_trait]
impl Milter for AddHeader {
    type Message = ();

    /// Ask for the one action we use, and for no stage but end of message:
    /// the MTA then sends no HELO, MAIL, RCPT, header or body packets at all.
    async fn negotiate(&mut self, _offer: &OptNeg) -> Result<Options, BoxError> {
        Ok(Options::new()
            .actions(Actions::ADD_HEADERS)
            .stages(Stages::empty()))
    }

    /// Modifications are only possible here. `add_header` fails (and we
    /// return the error, which answers with the failure policy) only if the
    /// action was not negotiated or the header cannot be encoded.
    async fn eom(&mut self, ctx: &mut EomContext<'_>, _msg: &mut ()) -> Result<Status, BoxError> {
        let (name, value) = &*self.name;
        ctx.add_header(name, value)?;
        Ok(Status::Continue)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging();
    let header = std::sync::Arc::new((args.name, args.value));
    serve(&args.listen, move || AddHeader {
        name: header.clone(),
    })
    .await
}
