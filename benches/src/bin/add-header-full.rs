//! add-header-full: the add-header filter of the examples, but walking
//! every stage of every message (no stage negotiated away), exactly as
//! `cmilter -m addheader` and `nullmilter -m addheader` do. The load
//! benchmark uses it to compare the add-header path on the same
//! conversation; `examples/add-header` negotiates every stage away and so
//! receives far fewer packets.
//!
//! ```text
//! add-header-full --listen unix:/tmp/ahf.sock [--max-connections N]
//! ```

use clap::Parser;
use milter_proto::Actions;
use milter_proto::negotiate::OptNeg;
use milter_server::{
    BoxError, Config, EomContext, Listener, Milter, Options, Server, Status, async_trait,
};

/// Command line.
#[derive(Parser)]
#[command(about = "Adds X-CMilter: seen to every message, walking every stage")]
struct Args {
    /// Socket specification: unix:/path or inet:PORT@HOST.
    #[arg(long)]
    listen: String,
    /// Connection limit of the server.
    #[arg(long, default_value_t = Config::default().max_connections)]
    max_connections: usize,
}

/// Every callback but EOM keeps its default (continue).
struct AddHeaderFull;

#[async_trait]
impl Milter for AddHeaderFull {
    type Message = ();

    async fn negotiate(&mut self, _offer: &OptNeg) -> Result<Options, BoxError> {
        Ok(Options::new().actions(Actions::ADD_HEADERS))
    }

    async fn eom(&mut self, ctx: &mut EomContext<'_>, _msg: &mut ()) -> Result<Status, BoxError> {
        ctx.add_header("X-CMilter", "seen")?;
        Ok(Status::Accept)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = Listener::bind(&args.listen).await?;
    let config = Config::default().max_connections(args.max_connections);
    Server::new(|| AddHeaderFull)
        .config(config)
        .serve(listener, std::future::pending())
        .await?;
    Ok(())
}
