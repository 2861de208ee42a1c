//! Per-stage macro storage with libmilter's clearing and lookup rules.

use bytes::{Bytes, BytesMut};

use crate::command::{MacroPairs, Macros, code};

/// Storage slots, in libmilter's internal order (EOH before EOM).
const SLOTS: usize = 7;

fn slot(stage: u8) -> Option<usize> {
    Some(match stage {
        code::CONNECT => 0,
        code::HELO => 1,
        code::MAIL => 2,
        code::RCPT => 3,
        code::DATA => 4,
        code::EOH => 5,
        code::BODYEOB => 6,
        _ => return None,
    })
}

/// The macros the MTA sent, per stage.
///
/// * A macro packet for a stage replaces that stage's whole set; packets for
///   stages libmilter does not store (Postfix sends `'L'`, `'B'`, `'U'`) are
///   ignored.
/// * [`MacroStore::on_command`] applies libmilter's clearing: OPTNEG, QUIT
///   and QUIT_NC clear everything; CONNECT clears HELO and later; HELO clears
///   MAIL and later; MAIL clears RCPT and later; RCPT clears DATA and later.
///   ABORT clears nothing: macros persist across messages until replaced.
/// * [`MacroStore::get`] searches the latest stage first; `{x}` also finds a
///   stored `x` and `x` a stored `{x}` (single characters only, as libmilter).
///
/// Values are views into the frames they arrived in: storing costs no copy.
#[derive(Debug, Clone, Default)]
pub struct MacroStore {
    /// Each stage's raw pairs; empty when the stage has none. (Raw bytes
    /// rather than `Option<Macros>`: a store lives as long as its
    /// connection, idle ones included, so its size counts.)
    slots: [Bytes; SLOTS],
    /// Slots set since the last [`MacroStore::detach`].
    fresh: [bool; SLOTS],
}

impl MacroStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores a macro packet (replacing the stage's previous set).
    pub fn set(&mut self, macros: Macros) {
        if let Some(i) = slot(macros.stage)
            && let (Some(s), Some(fresh)) = (self.slots.get_mut(i), self.fresh.get_mut(i))
        {
            *s = macros.into_raw();
            *fresh = true;
        }
    }

    /// Clears what the arrival of command `code` clears.
    pub fn on_command(&mut self, command: u8) {
        let from = match command {
            code::OPTNEG | code::QUIT | code::QUIT_NC => 0,
            other => match slot(other) {
                Some(i) if i <= 3 => i + 1,
                _ => return,
            },
        };
        for s in self.slots.iter_mut().skip(from) {
            *s = Bytes::new();
        }
    }

    /// Copies the packets stored since the last call out of the (much
    /// larger) read buffers they arrived in, all into one allocation, so
    /// that the store no longer keeps those buffers alive. A server calls
    /// this before a connection goes idle.
    pub fn detach(&mut self) {
        let (mut count, mut total) = (0, 0);
        for (raw, fresh) in self.slots.iter().zip(&self.fresh) {
            if *fresh && !raw.is_empty() {
                count += 1;
                total += raw.len();
            }
        }
        if count > 1 {
            let mut all = BytesMut::with_capacity(total);
            for (raw, fresh) in self.slots.iter().zip(&self.fresh) {
                if *fresh {
                    all.extend_from_slice(raw);
                }
            }
            let all = all.freeze();
            let mut at = 0;
            for (raw, fresh) in self.slots.iter_mut().zip(&self.fresh) {
                if *fresh && !raw.is_empty() {
                    *raw = all.slice(at..at + raw.len());
                    at += raw.len();
                }
            }
        } else if count == 1
            && let Some(raw) = self
                .slots
                .iter_mut()
                .zip(&self.fresh)
                .find_map(|(raw, fresh)| (*fresh && !raw.is_empty()).then_some(raw))
        {
            *raw = Bytes::copy_from_slice(raw);
        }
        self.fresh = [false; SLOTS];
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.slots = Default::default();
    }

    /// Looks a macro up by name, e.g. `"{client_addr}"`, `"i"` or `"{i}"`.
    /// The value is a view into the packet it arrived in.
    #[doc(alias = "smfi_getsymval")]
    pub fn get(&self, name: &str) -> Option<Bytes> {
        let name = name.as_bytes();
        // libmilter's aliasing: "{x}" also matches "x", and "x" also "{x}".
        let (bare, braced): (&[u8], Option<[u8; 3]>) = match name {
            [b'{', c, b'}'] => (std::slice::from_ref(c), None),
            [c] => (name, Some([b'{', *c, b'}'])),
            _ => (name, None),
        };
        self.stored().find_map(|mut pairs| {
            pairs
                .find(|(n, _)| {
                    let n = n.as_ref();
                    n == name || n == bare || braced.as_ref().is_some_and(|b| n == b)
                })
                .map(|(_, v)| v)
        })
    }

    /// As [`MacroStore::get`], returning the value as UTF-8 text if it is.
    pub fn get_str(&self, name: &str) -> Option<String> {
        self.get(name)
            .and_then(|v| String::from_utf8(v.to_vec()).ok())
    }

    /// Every visible macro, latest stage first (a name may appear more than
    /// once if several stages define it; the first one is what `get` returns).
    pub fn iter(&self) -> impl Iterator<Item = (Bytes, Bytes)> + '_ {
        self.stored().flatten()
    }

    /// The stored stages' pairs, latest stage first.
    fn stored(&self) -> impl Iterator<Item = MacroPairs<'_>> + '_ {
        self.slots
            .iter()
            .rev()
            .filter(|raw| !raw.is_empty())
            .map(MacroPairs::of)
    }
}
