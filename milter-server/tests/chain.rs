//! Several filters in one process.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::start_unix;
use milter_client::{Client, ClientConfig, Message, Modification, Verdict};
use milter_proto::{Actions, Envelope, MacroStage, OptNeg, ProtocolFlags};
use milter_server::{
    BoxError, Chain, Config, Context, EomContext, Milter, Options, Stages, Status, async_trait,
};

/// Adds a header named after itself; rejects one sender; accepts another early.
struct Part {
    name: &'static str,
    reject: &'static str,
    accept: &'static str,
}

#[async_trait]
impl Milter for Part {
    type Message = u32;
    async fn negotiate(&mut self, _: &OptNeg) -> Result<Options, BoxError> {
        Ok(Options::new()
            .actions(Actions::ADD_HEADERS)
            .stages(Stages::MAIL | Stages::BODY)
            .no_reply(Stages::BODY)
            .macros(MacroStage::Mail, self.name))
    }
    async fn envfrom(
        &mut self,
        _: &Context<'_>,
        n: &mut u32,
        from: &Envelope,
    ) -> Result<Status, BoxError> {
        *n += 1;
        let from = from.address.as_ref();
        Ok(if from == self.reject.as_bytes() {
            Status::Reject
        } else if from == self.accept.as_bytes() {
            Status::Accept
        } else {
            Status::Continue
        })
    }
    async fn body(&mut self, _: &Context<'_>, _: &mut u32, _: &Bytes) -> Result<Status, BoxError> {
        Ok(Status::Continue)
    }
    async fn eom(&mut self, ctx: &mut EomContext<'_>, n: &mut u32) -> Result<Status, BoxError> {
        // Each filter's message state is its own: it saw exactly one MAIL.
        ctx.add_header("X-Part", &format!("{} {}", self.name, n))?;
        Ok(Status::Continue)
    }
}

/// A filter that handles RCPT only and never replies at BODY.
struct RcptOnly;

#[async_trait]
impl Milter for RcptOnly {
    type Message = ();
    async fn negotiate(&mut self, _: &OptNeg) -> Result<Options, BoxError> {
        Ok(Options::new().stages(Stages::RCPT))
    }
}

fn chain() -> Chain {
    Chain::new()
        .push(Part {
            name: "a",
            reject: "<bad-a@x>",
            accept: "<ok-a@x>",
        })
        .push(Part {
            name: "b",
            reject: "<bad-b@x>",
            accept: "<ok-b@x>",
        })
        .push(RcptOnly)
}

fn headers(mods: &[Modification]) -> Vec<String> {
    mods.iter()
        .filter_map(|m| match m {
            Modification::AddHeader { value, .. } => {
                Some(String::from_utf8_lossy(value).into_owned())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn chain_negotiates_the_union_and_runs_filters_in_order() {
    let server = start_unix(chain, Config::default()).await;
    let client = Client::new(ClientConfig::default().with_timeouts(Duration::from_secs(10)));
    let mut conn = client.connect(server.spec.as_str()).await.unwrap();
    let agreed = conn.agreed();
    assert!(agreed.actions.contains(Actions::ADD_HEADERS));
    // MAIL, RCPT and BODY are wanted; BODY is no-reply for both handlers.
    assert!(!agreed.protocol.contains(ProtocolFlags::NO_MAIL));
    assert!(!agreed.protocol.contains(ProtocolFlags::NO_RCPT));
    assert!(agreed.protocol.contains(ProtocolFlags::NR_BODY));
    assert!(agreed.protocol.contains(ProtocolFlags::NO_HELO));
    assert_eq!(
        agreed.requested_macros(MacroStage::Mail),
        Some(vec!["a", "b"])
    );

    let base = |from: &str| Message::new().sender(from).rcpt("<r@x>").body("x\r\n");
    conn.connect(&[], "c", milter_proto::ConnectAddress::Unknown)
        .await
        .unwrap();
    let out = conn.send_message(&base("<plain@x>")).await.unwrap();
    assert_eq!(out.verdict, Verdict::Accepted);
    assert_eq!(headers(&out.modifications), vec!["a 1", "b 1"]);

    // The second filter rejects: that is the answer.
    let out = conn.send_message(&base("<bad-b@x>")).await.unwrap();
    assert_eq!(out.verdict, Verdict::Rejected);

    // The first accepts early: it leaves the message, the second goes on.
    let out = conn.send_message(&base("<ok-a@x>")).await.unwrap();
    assert_eq!(out.verdict, Verdict::Accepted);
    assert_eq!(headers(&out.modifications), vec!["b 1"]);
    conn.quit().await.unwrap();
    server.stop().await;
}
