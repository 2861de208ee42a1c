//! What callbacks can see and do.

use std::marker::PhantomData;
use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use milter_proto::frame::CHUNK_SIZE;
use milter_proto::{Actions, Connect, EncodeError, MacroStore, ProtocolFlags, Response};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A modification that cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    /// The action was not negotiated: list it in [`crate::Options::actions`].
    #[error("action {action} was not negotiated")]
    NotNegotiated {
        /// The `SMFIF_*` name.
        action: &'static str,
    },
    /// An argument cannot be encoded (NUL inside, empty name, too long).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Writing a progress packet failed.
    #[error("sending progress failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Read-only view of the connection for stage callbacks.
///
/// Callbacks get it by reference from the session, which owns it: the
/// lifetime ties it to the session that lends it.
#[derive(Debug)]
pub struct Context<'a> {
    pub(crate) id: u64,
    pub(crate) macros: MacroStore,
    pub(crate) client: Option<Connect>,
    pub(crate) agreed: Negotiated,
    pub(crate) session: PhantomData<&'a ()>,
}

/// What a session keeps of the negotiation (not the whole
/// [`milter_proto::Agreed`], whose reply copy every idle connection would
/// carry).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Negotiated {
    pub(crate) version: u32,
    pub(crate) actions: Actions,
    pub(crate) protocol: ProtocolFlags,
    pub(crate) max_data_size: usize,
}

impl Context<'_> {
    /// This connection's number, as logged by the server.
    pub fn connection_id(&self) -> u64 {
        self.id
    }

    /// A macro's value, e.g. `"{client_addr}"`, `"i"`, `"{auth_authen}"`.
    /// Names follow libmilter: `"{i}"` also finds `"i"` and the reverse.
    #[doc(alias = "smfi_getsymval")]
    pub fn macro_value(&self, name: &str) -> Option<Bytes> {
        self.macros.get(name)
    }

    /// A macro's value as UTF-8 text (`None` if absent or not UTF-8).
    pub fn macro_str(&self, name: &str) -> Option<String> {
        self.macros.get_str(name)
    }

    /// All macros currently visible.
    pub fn macros(&self) -> &MacroStore {
        &self.macros
    }

    /// The queue id (macro `i`), once the MTA has assigned one (Postfix:
    /// from DATA on; Sendmail: from MAIL on).
    pub fn queue_id(&self) -> Option<String> {
        self.macro_str("i")
    }

    /// The SMTP client, once CONNECT was seen.
    pub fn client(&self) -> Option<&Connect> {
        self.client.as_ref()
    }

    /// The SMTP client's IP address, if it connected over IP.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client.as_ref().and_then(Connect::ip)
    }

    /// The negotiated protocol version.
    pub fn protocol_version(&self) -> u32 {
        self.agreed.version
    }

    /// The negotiated actions.
    pub fn actions(&self) -> Actions {
        self.agreed.actions
    }

    /// The protocol flags in force.
    pub fn protocol(&self) -> ProtocolFlags {
        self.agreed.protocol
    }
}

/// The end-of-message context: everything [`Context`] offers plus every
/// modification. Modifications are sent, in the order made, just before the
/// final reply and in the same write; body replacement chunks go last and
/// contiguous, as Postfix requires. If the callback fails, none is sent.
pub struct EomContext<'a> {
    pub(crate) ctx: &'a Context<'a>,
    /// Replies of this turn not yet written (to commands before EOM).
    pub(crate) out: &'a mut BytesMut,
    /// Encoded modifications, sent with the final reply.
    pub(crate) mods: &'a mut BytesMut,
    /// Encoded body replacement chunks, sent after the other modifications.
    pub(crate) body: &'a mut BytesMut,
    pub(crate) io: &'a mut (dyn AsyncWrite + Unpin + Send),
    pub(crate) max_payload: usize,
    pub(crate) body_replaced: bool,
    pub(crate) modifications: usize,
}

impl std::fmt::Debug for EomContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EomContext")
            .field("ctx", &self.ctx)
            .field("modifications", &self.modifications)
            .finish_non_exhaustive()
    }
}

impl<'a> std::ops::Deref for EomContext<'a> {
    type Target = Context<'a>;
    fn deref(&self) -> &Context<'a> {
        self.ctx
    }
}

impl EomContext<'_> {
    fn push(&mut self, response: Response) -> Result<(), ActionError> {
        if let Some(action) = response.required_action()
            && !self.ctx.agreed.actions.contains(action)
        {
            return Err(ActionError::NotNegotiated {
                action: action.libmilter_name().unwrap_or("SMFIF_*"),
            });
        }
        response.encode(self.mods, self.max_payload)?;
        self.modifications += 1;
        Ok(())
    }

    /// How many modifications were made so far.
    pub fn modification_count(&self) -> usize {
        self.modifications
    }

    /// Appends a header (`SMFIF_ADDHDRS`). Without `SMFIP_HDR_LEADSPC` the
    /// MTA puts a space after the colon itself.
    #[doc(alias = "smfi_addheader")]
    pub fn add_header(&mut self, name: &str, value: &str) -> Result<(), ActionError> {
        self.push(Response::AddHeader {
            name: Bytes::copy_from_slice(name.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        })
    }

    /// Inserts a header at position `index` (0 = top) (`SMFIF_ADDHDRS`).
    /// Sendmail and Postfix count positions differently (protocol notes §8).
    #[doc(alias = "smfi_insheader")]
    pub fn insert_header(
        &mut self,
        index: u32,
        name: &str,
        value: &str,
    ) -> Result<(), ActionError> {
        self.push(Response::InsertHeader {
            index,
            name: Bytes::copy_from_slice(name.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        })
    }

    /// Changes the `index`-th (1-based) header called `name`
    /// (`SMFIF_CHGHDRS`); if there is none, the MTA adds it.
    #[doc(alias = "smfi_chgheader")]
    pub fn change_header(
        &mut self,
        name: &str,
        index: u32,
        value: &str,
    ) -> Result<(), ActionError> {
        self.push(Response::ChangeHeader {
            index,
            name: Bytes::copy_from_slice(name.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        })
    }

    /// Deletes the `index`-th (1-based) header called `name` (`SMFIF_CHGHDRS`).
    pub fn delete_header(&mut self, name: &str, index: u32) -> Result<(), ActionError> {
        self.change_header(name, index, "")
    }

    /// Changes the envelope sender (`SMFIF_CHGFROM`); `args` are ESMTP
    /// arguments, space separated (Postfix honours only RET and ENVID).
    #[doc(alias = "smfi_chgfrom")]
    pub fn change_from(&mut self, address: &str, args: Option<&str>) -> Result<(), ActionError> {
        self.push(Response::ChangeFrom {
            address: Bytes::copy_from_slice(address.as_bytes()),
            args: args.map(|a| Bytes::copy_from_slice(a.as_bytes())),
        })
    }

    /// Adds a recipient (`SMFIF_ADDRCPT`).
    #[doc(alias = "smfi_addrcpt")]
    pub fn add_rcpt(&mut self, address: &str) -> Result<(), ActionError> {
        self.push(Response::AddRcpt {
            address: Bytes::copy_from_slice(address.as_bytes()),
        })
    }

    /// Adds a recipient with ESMTP arguments (`SMFIF_ADDRCPT_PAR`; Postfix
    /// honours NOTIFY and ORCPT).
    #[doc(alias = "smfi_addrcpt_par")]
    pub fn add_rcpt_with_args(
        &mut self,
        address: &str,
        args: Option<&str>,
    ) -> Result<(), ActionError> {
        self.push(Response::AddRcptPar {
            address: Bytes::copy_from_slice(address.as_bytes()),
            args: args.map(|a| Bytes::copy_from_slice(a.as_bytes())),
        })
    }

    /// Removes a recipient, given exactly as the MTA sent it (with angle
    /// brackets) (`SMFIF_DELRCPT`).
    #[doc(alias = "smfi_delrcpt")]
    pub fn delete_rcpt(&mut self, address: &str) -> Result<(), ActionError> {
        self.push(Response::DeleteRcpt {
            address: Bytes::copy_from_slice(address.as_bytes()),
        })
    }

    /// Appends to the replacement body (`SMFIF_CHGBODY`). The first call
    /// replaces the body; later calls append. `&[]` alone empties the body.
    /// Sent in chunks of at most 65535 bytes. Use CRLF line ends.
    #[doc(alias = "smfi_replacebody")]
    pub fn replace_body(&mut self, data: &[u8]) -> Result<(), ActionError> {
        if !self.ctx.agreed.actions.contains(Actions::CHANGE_BODY) {
            return Err(ActionError::NotNegotiated {
                action: "SMFIF_CHGBODY",
            });
        }
        let limit = self.max_payload.min(CHUNK_SIZE);
        if data.is_empty() && !self.body_replaced {
            milter_proto::frame::encode_raw(self.body, b'b', &[], limit)?;
        }
        for chunk in data.chunks(limit) {
            milter_proto::frame::encode_raw(self.body, b'b', chunk, limit)?;
        }
        self.body_replaced = true;
        self.modifications += 1;
        Ok(())
    }

    /// Quarantines the message (Postfix: hold queue) (`SMFIF_QUARANTINE`).
    #[doc(alias = "smfi_quarantine")]
    pub fn quarantine(&mut self, reason: &str) -> Result<(), ActionError> {
        self.push(Response::Quarantine {
            reason: Bytes::copy_from_slice(reason.as_bytes()),
        })
    }

    /// Tells the MTA the filter is still working, restarting its timeout
    /// (`SMFIR_PROGRESS`). Sent at once; modifications stay with the final
    /// reply, so a callback that fails after this sends none.
    #[doc(alias = "smfi_progress")]
    pub async fn progress(&mut self) -> Result<(), ActionError> {
        Response::Progress.encode(self.out, self.max_payload)?;
        self.io.write_all(self.out).await?;
        self.io.flush().await?;
        self.out.clear();
        Ok(())
    }
}
