//! [`Store`] on a Redis server, shared by several greylist-filter instances.
//!
//! Key layout (every key starts with the configurable prefix, default `greylist:`):
//!
//! | key                  | type   | content                                            |
//! |----------------------|--------|----------------------------------------------------|
//! | `t:<tuple key>`      | string | [`TupleRecord::encode`] bytes                      |
//! | `h:<network>`        | hash   | host record fields `p` (passes), `t` (trusted until), `e` (expires) |
//! | `pc:<network>`       | string | pending tuples of the network                      |
//! | `n:<network>`        | zset   | the network's tuple keys (score 0, ordered by key) |
//! | `xt` / `xh`          | zset   | expiry index of tuples / hosts, score = expiry     |
//! | `pending`            | string | pending tuples in total                            |
//!
//! Every write is one Lua script, so it is atomic even with several daemons on one
//! Redis: the host record is read-modified-written inside the script (the same rules as
//! [`HostRecord::apply`]), and the pending counters move with the tuple state.
//!
//! Expiry: each record key also gets a Redis TTL (its expiry plus
//! [`RedisOptions::ttl_grace`], measured on the Redis server's clock), so Redis deletes
//! records by itself even when no daemon runs. The sweep ([`Store::expire`]) is one
//! cheap script per step that pops due entries of the expiry index and keeps the
//! counters exact; records Redis already dropped are just skipped.
//!
//! Failures: every command is bounded by [`RedisOptions::timeout`] (connect and
//! response), so a dead Redis costs at most about that long per decision, and the
//! error surfaces as [`StoreError`] for the engine's fail-open policy. The
//! [`ConnectionManager`] reconnects by itself on the next command.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::{ExpireReport, Store, StoreError, StoreStats};
use crate::record::{HostRecord, HostUpdate, Snapshot, TupleRecord, Updates};
use crate::tuple::Key;

/// Tuning of a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Prefix of every key, so several deployments can share one database.
    pub prefix: String,
    /// Upper bound of one connection attempt and of one command's response.
    pub timeout: Duration,
    /// Redis TTL beyond a record's expiry; the sweep normally deletes records first.
    /// `None` disables Redis TTLs (only the sweep deletes).
    pub ttl_grace: Option<Duration>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "greylist:".to_owned(),
            timeout: Duration::from_millis(500),
            ttl_grace: Some(Duration::from_secs(86_400)),
        }
    }
}

/// The Redis backend. Cheap to share; all methods take `&self`.
pub struct RedisStore {
    conn: ConnectionManager,
    opts: RedisOptions,
    url: String,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("prefix", &self.opts.prefix)
            .finish_non_exhaustive()
    }
}

struct Scripts {
    lookup: Script,
    apply: Script,
    expire: Script,
    flush_network: Script,
}

/// Computes a record key's TTL from its expiry (ARGV) and the server clock. Shared by
/// the write scripts. `grace < 0` means no TTL.
const TTL_FN: &str = r#"
local function set_ttl(key, expires, grace)
  if grace < 0 then return end
  local now = tonumber(redis.call('TIME')[1])
  local ttl = expires - now + grace
  if ttl > 0 then
    redis.call('EXPIRE', key, math.floor(ttl))
  else
    redis.call('PERSIST', key)
  end
end
"#;

/// KEYS: tuple, host, pc. Returns {tuple bytes or false, p, t, e or false, pending}.
const LOOKUP: &str = r#"
local t = redis.call('GET', KEYS[1])
local h = redis.call('HMGET', KEYS[2], 'p', 't', 'e')
local pc = tonumber(redis.call('GET', KEYS[3]) or '0')
return {t, h[1], h[2], h[3], pc}
"#;

/// KEYS: tuple, host, pc, network zset, tuple expiry, host expiry, pending total.
/// ARGV: key bytes, network, grace, has_tuple, tuple bytes, tuple expires,
///       host kind ('' none, 'count', 'refresh'), a, b, c.
const APPLY: &str = r#"
local grace = tonumber(ARGV[3])
if ARGV[4] == '1' then
  local old = redis.call('GET', KEYS[1])
  local was = 0
  if old and string.byte(old, 2) == 0 then was = 1 end
  local new = ARGV[5]
  local is = 0
  if string.byte(new, 2) == 0 then is = 1 end
  local exp = tonumber(ARGV[6])
  redis.call('SET', KEYS[1], new)
  set_ttl(KEYS[1], exp, grace)
  redis.call('ZADD', KEYS[4], 0, ARGV[1])
  redis.call('ZADD', KEYS[5], exp, ARGV[1])
  local d = is - was
  if d ~= 0 then
    local n = redis.call('INCRBY', KEYS[3], d)
    if n <= 0 then redis.call('DEL', KEYS[3]) end
    n = redis.call('INCRBY', KEYS[7], d)
    if n <= 0 then redis.call('DEL', KEYS[7]) end
  end
end
if ARGV[7] ~= '' then
  local h = redis.call('HMGET', KEYS[2], 'p', 't', 'e')
  local p = tonumber(h[1] or '0')
  local t = tonumber(h[2] or '0')
  local e = tonumber(h[3] or '0')
  if ARGV[7] == 'count' then
    local now = tonumber(ARGV[8])
    local threshold = tonumber(ARGV[9])
    local untl = now + tonumber(ARGV[10])
    p = p + 1
    e = math.max(e, untl)
    if threshold > 0 and p >= threshold then t = math.max(t, untl) end
  else
    local untl = tonumber(ARGV[8])
    if t > 0 then t = math.max(t, untl) end
    e = math.max(e, untl)
  end
  redis.call('HSET', KEYS[2], 'p', string.format('%.0f', p), 't', string.format('%.0f', t),
    'e', string.format('%.0f', e))
  set_ttl(KEYS[2], e, grace)
  redis.call('ZADD', KEYS[6], e, ARGV[2])
end
return 1
"#;

/// KEYS: tuple expiry, host expiry, pending total. ARGV: prefix, now, limit.
/// Returns {tuples, hosts, more}.
const EXPIRE: &str = r#"
local prefix = ARGV[1]
local now = ARGV[2]
local limit = tonumber(ARGV[3])
local tuples, hosts, taken = 0, 0, 0
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit + 1)
local more = 0
if #due > limit then more = 1 end
for i = 1, math.min(#due, limit) do
  local k = due[i]
  redis.call('ZREM', KEYS[1], k)
  local old = redis.call('GET', prefix .. 't:' .. k)
  local net = string.sub(k, 1, (string.find(k, '\0', 1, true) or (#k + 1)) - 1)
  redis.call('ZREM', prefix .. 'n:' .. net, k)
  if old then
    redis.call('DEL', prefix .. 't:' .. k)
    tuples = tuples + 1
    if string.byte(old, 2) == 0 then
      local n = redis.call('DECR', prefix .. 'pc:' .. net)
      if n <= 0 then redis.call('DEL', prefix .. 'pc:' .. net) end
      n = redis.call('DECR', KEYS[3])
      if n <= 0 then redis.call('DEL', KEYS[3]) end
    end
  end
  taken = taken + 1
end
local left = limit - taken
if left > 0 then
  local hdue = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, left + 1)
  if #hdue > left then more = 1 end
  for i = 1, math.min(#hdue, left) do
    redis.call('ZREM', KEYS[2], hdue[i])
    if redis.call('DEL', prefix .. 'h:' .. hdue[i]) == 1 then hosts = hosts + 1 end
  end
elseif redis.call('ZCOUNT', KEYS[2], '-inf', now) > 0 then
  more = 1
end
return {tuples, hosts, more}
"#;

/// KEYS: network zset, host, pc, tuple expiry, host expiry, pending total.
/// ARGV: prefix, network. Returns the tuples deleted.
const FLUSH_NETWORK: &str = r#"
local prefix = ARGV[1]
local keys = redis.call('ZRANGE', KEYS[1], 0, -1)
local deleted = 0
for _, k in ipairs(keys) do
  deleted = deleted + redis.call('DEL', prefix .. 't:' .. k)
  redis.call('ZREM', KEYS[4], k)
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[5], ARGV[2])
local pc = tonumber(redis.call('GET', KEYS[3]) or '0')
redis.call('DEL', KEYS[3])
if pc > 0 then
  local n = redis.call('DECRBY', KEYS[6], pc)
  if n <= 0 then redis.call('DEL', KEYS[6]) end
end
return deleted
"#;

fn backend(e: redis::RedisError) -> StoreError {
    StoreError::backend(e)
}

fn parse_u64(v: Option<&str>) -> u64 {
    v.and_then(|s| s.parse::<f64>().ok())
        .map_or(0, |f| if f <= 0.0 { 0 } else { f as u64 })
}

impl RedisStore {
    /// Connects to `url` (`redis://HOST:PORT/DB`, `rediss://…`, `redis+unix:///path`).
    ///
    /// The connection is made lazily: a Redis that is down at start-up is not an error
    /// here; commands fail (and the engine fails open) until it is reachable.
    pub fn open(url: &str, opts: RedisOptions) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Open {
            path: url.into(),
            source: Box::new(e),
        })?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.timeout))
            .set_response_timeout(Some(opts.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(opts.timeout);
        let conn =
            ConnectionManager::new_lazy_with_config(client, cfg).map_err(|e| StoreError::Open {
                path: url.into(),
                source: Box::new(e),
            })?;
        let ttl = |s: &str| format!("{TTL_FN}{s}");
        Ok(RedisStore {
            conn,
            url: url.to_owned(),
            scripts: Scripts {
                lookup: Script::new(LOOKUP),
                apply: Script::new(&ttl(APPLY)),
                expire: Script::new(EXPIRE),
                flush_network: Script::new(FLUSH_NETWORK),
            },
            opts,
        })
    }

    /// The URL this store talks to.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn k(&self, kind: &str, id: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.opts.prefix.len() + kind.len() + id.len());
        v.extend_from_slice(self.opts.prefix.as_bytes());
        v.extend_from_slice(kind.as_bytes());
        v.extend_from_slice(id);
        v
    }

    fn grace(&self) -> i64 {
        self.opts
            .ttl_grace
            .map_or(-1, |g| i64::try_from(g.as_secs()).unwrap_or(i64::MAX))
    }

    /// Runs `fut` under the store's timeout (on top of the connection's own timeouts, so
    /// reconnect back-off cannot stretch one decision).
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.opts.timeout * 2, fut).await {
            Ok(r) => r.map_err(backend),
            Err(_) => Err(StoreError::Unavailable),
        }
    }

    /// Checks that Redis answers (used at start-up for a log line).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        self.bounded(async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(drop)
    }
}

type LookupReply = (
    Option<Vec<u8>>,
    Option<String>,
    Option<String>,
    Option<String>,
    u64,
);

#[async_trait]
impl Store for RedisStore {
    async fn lookup(&self, key: &Key) -> Result<Snapshot, StoreError> {
        let mut c = self.conn.clone();
        let net = key.network().as_bytes();
        let mut inv = self.scripts.lookup.prepare_invoke();
        inv.key(self.k("t:", key.as_bytes()))
            .key(self.k("h:", net))
            .key(self.k("pc:", net));
        let (t, p, tr, e, pc): LookupReply = self
            .bounded(async move { inv.invoke_async(&mut c).await })
            .await?;
        let host = e.is_some().then(|| HostRecord {
            passed_tuples: u32::try_from(parse_u64(p.as_deref())).unwrap_or(u32::MAX),
            trusted_until: parse_u64(tr.as_deref()),
            expires: parse_u64(e.as_deref()),
        });
        Ok(Snapshot {
            tuple: t.as_deref().and_then(TupleRecord::decode),
            host,
            pending_in_network: u32::try_from(pc).unwrap_or(u32::MAX),
        })
    }

    async fn apply(&self, key: &Key, updates: &Updates) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        let net = key.network().as_bytes();
        let mut inv = self.scripts.apply.prepare_invoke();
        inv.key(self.k("t:", key.as_bytes()))
            .key(self.k("h:", net))
            .key(self.k("pc:", net))
            .key(self.k("n:", net))
            .key(self.k("xt", b""))
            .key(self.k("xh", b""))
            .key(self.k("pending", b""))
            .arg(key.as_bytes())
            .arg(net)
            .arg(self.grace());
        match updates.tuple {
            Some(w) => inv
                .arg("1")
                .arg(&w.record.encode()[..])
                .arg(w.record.expires),
            None => inv.arg("0").arg("").arg(0),
        };
        match updates.host {
            Some(HostUpdate::CountPass {
                now,
                threshold,
                period,
            }) => inv.arg("count").arg(now).arg(threshold).arg(period),
            Some(HostUpdate::Refresh { until }) => inv.arg("refresh").arg(until).arg(0).arg(0),
            None => inv.arg("").arg(0).arg(0).arg(0),
        };
        self.bounded(async move { inv.invoke_async::<i64>(&mut c).await })
            .await
            .map(drop)
    }

    async fn host(&self, network: &str) -> Result<Option<HostRecord>, StoreError> {
        Ok(self.lookup(&Key::network_probe(network)).await?.host)
    }

    async fn pending_count(&self, network: &str) -> Result<u32, StoreError> {
        let mut c = self.conn.clone();
        let k = self.k("pc:", network.as_bytes());
        let n: Option<u64> = self.bounded(async move { c.get(k).await }).await?;
        Ok(u32::try_from(n.unwrap_or(0)).unwrap_or(u32::MAX))
    }

    async fn put(&self, key: &Key, record: &TupleRecord) -> Result<(), StoreError> {
        let u = Updates {
            tuple: Some(crate::record::TupleWrite {
                record: *record,
                durability: crate::record::Durability::Durable,
            }),
            host: None,
        };
        self.apply(key, &u).await
    }

    async fn expire(&self, now: u64, limit: usize) -> Result<ExpireReport, StoreError> {
        let mut c = self.conn.clone();
        let mut inv = self.scripts.expire.prepare_invoke();
        let now_arg = if now >= 1 << 53 {
            "+inf".to_owned()
        } else {
            now.to_string()
        };
        inv.key(self.k("xt", b""))
            .key(self.k("xh", b""))
            .key(self.k("pending", b""))
            .arg(self.opts.prefix.as_bytes())
            .arg(now_arg)
            .arg(limit);
        let (tuples, hosts, more): (u64, u64, u64) = self
            .bounded(async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(ExpireReport {
            tuples,
            hosts,
            more: more != 0,
        })
    }

    async fn list_network(
        &self,
        network: &str,
        limit: usize,
    ) -> Result<Vec<(Key, TupleRecord)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        let zk = self.k("n:", network.as_bytes());
        let stop = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
        let members: Vec<Vec<u8>> = {
            let mut c = c.clone();
            self.bounded(async move { c.zrange(zk, 0, stop).await })
                .await?
        };
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Vec<u8>> = members.iter().map(|m| self.k("t:", m)).collect();
        let values: Vec<Option<Vec<u8>>> = self.bounded(async move { c.mget(keys).await }).await?;
        Ok(members
            .iter()
            .zip(values)
            .filter_map(|(m, v)| Some((Key::from_bytes(m)?, TupleRecord::decode(&v?)?)))
            .collect())
    }

    async fn flush_network(&self, network: &str) -> Result<u64, StoreError> {
        let mut c = self.conn.clone();
        let net = network.as_bytes();
        let mut inv = self.scripts.flush_network.prepare_invoke();
        inv.key(self.k("n:", net))
            .key(self.k("h:", net))
            .key(self.k("pc:", net))
            .key(self.k("xt", b""))
            .key(self.k("xh", b""))
            .key(self.k("pending", b""))
            .arg(self.opts.prefix.as_bytes())
            .arg(net);
        self.bounded(async move { inv.invoke_async(&mut c).await })
            .await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut c = self.conn.clone();
        let (xt, xh, p) = (self.k("xt", b""), self.k("xh", b""), self.k("pending", b""));
        let (tuples, hosts, pending): (u64, u64, Option<u64>) = self
            .bounded(async move {
                redis::pipe()
                    .zcard(xt)
                    .zcard(xh)
                    .get(p)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(StoreStats {
            tuples,
            pending: pending.unwrap_or(0),
            hosts,
        })
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every write is acknowledged by Redis before `apply` returns; Redis persistence
        // (RDB/AOF) is the server's configuration.
        Ok(())
    }
}
