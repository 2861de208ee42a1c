//! accept-all: the smallest useful milter. It walks every stage of every
//! message and accepts it — a baseline for benchmarks and a template.
//!
//! ```text
//! accept-all --listen unix:/run/accept-all.sock --socket-mode 666
//! ```
//! Postfix: `smtpd_milters = unix:/run/accept-all.sock`.

use clap::Parser;
use milter_examples::{ListenArgs, init_logging, serve};
use milter_server::{Milter, async_trait};

/// Command line: just where to listen.
#[derive(Parser)]
#[command(about = "A milter that accepts every message")]
struct Args {
    #[command(flatten)]
    listen: ListenArgs,
}

/// No state and no overridden callback: every stage answers CONTINUE and
/// end of message accepts. The MTA still sends every stage, which is what a
/// fair "do nothing" baseline must measure.
struct AcceptAll;

#[async_trait]
impl Milter for AcceptAll {
    /// Nothing is remembered per message.
    type Message = ();
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging();
    serve(&args.listen, || AcceptAll).await
}
