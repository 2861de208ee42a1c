//! The admin HTTP interface (loopback only unless explicitly allowed) and the small
//! HTTP/1.1 client the `explain`, `list` and `flush` subcommands use.
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text: decisions by outcome and reason, store latency histogram, store errors, record counts, reloads, delays |
//! | `GET /explain?ip=&from=&rcpt=` | JSON: the decision an attempt now would get, why, and when it would pass; changes nothing |
//! | `GET /list?ip=[&limit=]` | JSON: the tuple records of the client network of `ip`; without `ip`, the record counts |
//! | `POST /flush?ip=` | JSON: forgets the client network of `ip` (its tuples and host trust) |
//! | `GET /health` | `ok` |
//!
//! There is no authentication: the listener is refused on a non-loopback address
//! unless `[admin] allow_non_loopback = true` (or `--admin-allow-remote`).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::decision_log::rfc5322_date;
use crate::engine::{Engine, Explanation};
use crate::identity::Identity;
use crate::metrics::{DECISION_LABELS, LATENCY_BUCKETS, MetricsSnapshot};
use crate::policy::Decision;
use crate::record::{HostRecord, TupleRecord, TupleState};
use crate::store::StoreStats;
use crate::tuple::parse_client_addr;

/// The admin routes over `engine`.
pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/explain", get(explain))
        .route("/list", get(list))
        .route("/flush", post(flush))
        .with_state(engine)
}

/// Serves the admin routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(engine))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn index() -> &'static str {
    "greylist-filter admin\n\
     GET  /metrics\n\
     GET  /explain?ip=IP&from=SENDER&rcpt=RECIPIENT\n\
     GET  /list?ip=IP[&limit=N]\n\
     POST /flush?ip=IP\n\
     GET  /health\n"
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// The `ip` parameter, or the message of a 400 answer.
fn parse_ip(ip: Option<&str>) -> Result<IpAddr, String> {
    let Some(ip) = ip.filter(|s| !s.trim().is_empty()) else {
        return Err("missing parameter ip".into());
    };
    parse_client_addr(ip).ok_or_else(|| format!("{ip:?} is not an IP address"))
}

async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    let snap = engine.metrics().snapshot();
    let stats = engine.store().stats().await;
    if stats.is_err() {
        engine.metrics().record_store_error();
    }
    let body = render_metrics(
        &snap,
        stats.ok().as_ref(),
        engine.dry_run(),
        &engine.acl_matches(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition of the counters (and record counts, if known), with
/// the (name, action, matches) of each `[[acl]]` rule.
pub fn render_metrics(
    m: &MetricsSnapshot,
    stats: Option<&StoreStats>,
    dry_run: bool,
    acl: &[(String, &str, u64)],
) -> String {
    let mut o = String::with_capacity(4096);
    let _ = writeln!(
        o,
        "# HELP greylist_decisions_total Recipients decided, by outcome and reason."
    );
    let _ = writeln!(o, "# TYPE greylist_decisions_total counter");
    for (i, (outcome, reason)) in DECISION_LABELS.iter().enumerate() {
        let v = m.decisions.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "greylist_decisions_total{{outcome=\"{outcome}\",reason=\"{reason}\"}} {v}"
        );
    }
    let _ = writeln!(
        o,
        "# HELP greylist_delay_seconds_total Sum of the delays of tuples that passed after greylisting."
    );
    let _ = writeln!(o, "# TYPE greylist_delay_seconds_total counter");
    let _ = writeln!(o, "greylist_delay_seconds_total {}", m.delay_seconds_total);
    let _ = writeln!(
        o,
        "# HELP greylist_store_errors_total Store operations that failed."
    );
    let _ = writeln!(o, "# TYPE greylist_store_errors_total counter");
    let _ = writeln!(o, "greylist_store_errors_total {}", m.store_errors);
    let _ = writeln!(
        o,
        "# HELP greylist_store_latency_seconds Latency of store lookups and writes."
    );
    let _ = writeln!(o, "# TYPE greylist_store_latency_seconds histogram");
    let mut cumulative = 0u64;
    for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += m.store_latency.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "greylist_store_latency_seconds_bucket{{le=\"{}\"}} {cumulative}",
            b.as_secs_f64()
        );
    }
    cumulative += m
        .store_latency
        .get(LATENCY_BUCKETS.len())
        .copied()
        .unwrap_or(0);
    let _ = writeln!(
        o,
        "greylist_store_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(
        o,
        "greylist_store_latency_seconds_sum {}",
        Duration::from_micros(m.store_latency_micros_total).as_secs_f64()
    );
    let _ = writeln!(o, "greylist_store_latency_seconds_count {cumulative}");
    let _ = writeln!(
        o,
        "# HELP greylist_config_reloads_total Configuration and whitelist reloads, by result."
    );
    let _ = writeln!(o, "# TYPE greylist_config_reloads_total counter");
    let _ = writeln!(
        o,
        "greylist_config_reloads_total{{result=\"applied\"}} {}",
        m.reloads_ok
    );
    let _ = writeln!(
        o,
        "greylist_config_reloads_total{{result=\"refused\"}} {}",
        m.reloads_failed
    );
    if let Some(s) = stats {
        let _ = writeln!(o, "# HELP greylist_records Records in the store, by kind.");
        let _ = writeln!(o, "# TYPE greylist_records gauge");
        let _ = writeln!(o, "greylist_records{{kind=\"tuple\"}} {}", s.tuples);
        let _ = writeln!(o, "greylist_records{{kind=\"pending\"}} {}", s.pending);
        let _ = writeln!(o, "greylist_records{{kind=\"host\"}} {}", s.hosts);
    }
    let _ = writeln!(
        o,
        "# HELP greylist_dry_run 1 if learning mode is on (nothing is tempfailed)."
    );
    let _ = writeln!(o, "# TYPE greylist_dry_run gauge");
    let _ = writeln!(o, "greylist_dry_run {}", u8::from(dry_run));
    if !acl.is_empty() {
        let _ = writeln!(
            o,
            "# HELP greylist_acl_matches_total Recipients each [[acl]] rule matched since it was loaded."
        );
        let _ = writeln!(o, "# TYPE greylist_acl_matches_total counter");
        for (name, action, n) in acl {
            let _ = writeln!(
                o,
                "greylist_acl_matches_total{{rule=\"{}\",action=\"{action}\"}} {n}",
                label(name)
            );
        }
    }
    o
}

#[derive(Debug, Deserialize)]
struct ExplainQuery {
    ip: Option<String>,
    #[serde(default)]
    from: String,
    #[serde(default)]
    rcpt: String,
}

fn tuple_json(r: &TupleRecord) -> Value {
    json!({
        "state": match r.state { TupleState::Pending => "pending", TupleState::Passed => "passed" },
        "first_seen": r.first_seen,
        "passed_at": (r.passed_at != 0).then_some(r.passed_at),
        "last_seen": r.last_seen,
        "expires": r.expires,
        "attempts": r.attempts,
        "passes": r.passes,
    })
}

fn host_json(h: &HostRecord) -> Value {
    json!({
        "passed_tuples": h.passed_tuples,
        "trusted_until": (h.trusted_until != 0).then_some(h.trusted_until),
        "expires": h.expires,
    })
}

/// One sentence for people: what would happen and when it would pass.
pub fn describe(e: &Explanation, dry_run: bool) -> String {
    let when = |t: u64| {
        if t <= e.now {
            "now".to_owned()
        } else {
            format!("in {} s (at {})", t - e.now, rfc5322_date(t))
        }
    };
    let mut s = match e.decision {
        Decision::Bypass(_) => format!(
            "not greylisted: {} bypass; it passes now",
            e.decision.reason()
        ),
        Decision::Pass(_) => format!("passes now: {}", e.decision.reason()),
        Decision::Greylist { reason, .. } => {
            let why = match reason {
                crate::policy::GreylistReason::NewTuple => "the tuple is new",
                crate::policy::GreylistReason::TooEarly => "the retry is too early",
                crate::policy::GreylistReason::WindowExpired => {
                    "the retry window ran out; a new round starts"
                }
                crate::policy::GreylistReason::AutoWhitelistExpired => {
                    "the auto-whitelist entry ran out; a new round starts"
                }
            };
            match e.passes_at {
                Some(t) => format!(
                    "an attempt now is greylisted ({why}); a retry passes {}",
                    when(t)
                ),
                None => format!("an attempt now is greylisted ({why})"),
            }
        }
        Decision::Tempfail(_) => format!(
            "an attempt now is tempfailed without being recorded: {}",
            e.decision.reason()
        ),
        Decision::Reject(_) => format!("an attempt now is rejected: {}", e.decision.reason()),
    };
    for f in &e.factors {
        s.push_str(&format!("; {f}"));
    }
    if dry_run && !e.decision.accepts() {
        s.push_str(" (dry run: it would be accepted anyway)");
    }
    if let Identity::Spf { domain } = &e.identity {
        s.push_str(&format!(
            "; identity: SPF-authorised domain {domain} (not the client network)"
        ));
    }
    s
}

/// The JSON answer of `/explain`.
pub fn explanation_json(
    ip: IpAddr,
    from: &str,
    rcpt: &str,
    e: &Explanation,
    dry_run: bool,
) -> Value {
    json!({
        "ip": ip.to_string(),
        "from": from,
        "rcpt": rcpt,
        "decision": e.decision.label(),
        "reason": e.decision.reason(),
        "accepted": e.decision.accepts() || dry_run,
        "dry_run": dry_run,
        "retry_after": match e.decision { Decision::Greylist { retry_after, .. } => Some(retry_after), _ => None },
        "passes_at": e.passes_at,
        "passes_at_date": e.passes_at.map(rfc5322_date),
        "passes_in": e.passes_at.map(|t| t.saturating_sub(e.now)),
        "key": e.key.as_ref().map(|k| json!({
            "network": k.network(), "sender": k.sender(), "recipient": k.recipient(),
        })),
        "factors": e.factors,
        "identity": match &e.identity {
            Identity::Network => json!({ "kind": "network" }),
            Identity::Spf { domain } => json!({ "kind": "spf", "domain": domain }),
        },
        "record": e.record.as_ref().map(tuple_json),
        "host": e.host.as_ref().map(host_json),
        "pending_in_network": e.pending_in_network,
        "now": e.now,
        "explanation": describe(e, dry_run),
    })
}

async fn explain(State(engine): State<Arc<Engine>>, Query(q): Query<ExplainQuery>) -> Response {
    let ip = match parse_ip(q.ip.as_deref()) {
        Ok(ip) => ip,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    if q.rcpt.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "missing parameter rcpt");
    }
    match engine.explain(ip, &q.from, &q.rcpt).await {
        Ok(e) => {
            axum::Json(explanation_json(ip, &q.from, &q.rcpt, &e, engine.dry_run())).into_response()
        }
        Err(e) => {
            engine.metrics().record_store_error();
            error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}"))
        }
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    ip: Option<String>,
    limit: Option<usize>,
}

async fn list(State(engine): State<Arc<Engine>>, Query(q): Query<ListQuery>) -> Response {
    if q.ip.as_deref().is_none_or(|s| s.trim().is_empty()) {
        return match engine.store().stats().await {
            Ok(s) => axum::Json(json!({
                "records": { "tuples": s.tuples, "pending": s.pending, "hosts": s.hosts },
            }))
            .into_response(),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
        };
    }
    let ip = match parse_ip(q.ip.as_deref()) {
        Ok(ip) => ip,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let limit = q.limit.unwrap_or(1000).clamp(1, 100_000);
    let network = engine.network_of(ip).to_string();
    let host = engine.store().host(&network).await;
    match (engine.list_ip(ip, limit).await, host) {
        (Ok(rows), Ok(host)) => {
            let tuples: Vec<Value> = rows
                .iter()
                .map(|(k, r)| {
                    let mut v = tuple_json(r);
                    if let Value::Object(m) = &mut v {
                        m.insert("sender".into(), k.sender().into());
                        m.insert("recipient".into(), k.recipient().into());
                    }
                    v
                })
                .collect();
            axum::Json(json!({
                "network": network,
                "host": host.as_ref().map(host_json),
                "truncated": rows.len() >= limit,
                "tuples": tuples,
            }))
            .into_response()
        }
        (Err(e), _) | (_, Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
    }
}

#[derive(Debug, Deserialize)]
struct FlushQuery {
    ip: Option<String>,
}

async fn flush(State(engine): State<Arc<Engine>>, Query(q): Query<FlushQuery>) -> Response {
    let ip = match parse_ip(q.ip.as_deref()) {
        Ok(ip) => ip,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    match engine.flush_ip(ip).await {
        Ok((network, deleted)) => {
            axum::Json(json!({ "network": network, "deleted": deleted })).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
    }
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters stay).
pub fn encode_query_value(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            o.push(char::from(b));
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

/// The error of [`request`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting, writing or reading failed.
    #[error("admin endpoint {addr}: {source}")]
    Io {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No answer within the timeout.
    #[error("admin endpoint {0}: no answer within 10 s")]
    Timeout(String),
    /// The answer is not HTTP.
    #[error("admin endpoint {0}: malformed HTTP response")]
    Malformed(String),
}

/// Sends one HTTP/1.1 request (`Connection: close`) to `addr` (`HOST:PORT`) and
/// returns the status code and body. Small on purpose: the admin API is loopback-only.
pub async fn request(
    addr: &str,
    method: &str,
    path_and_query: &str,
) -> Result<(u16, String), ClientError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = |source| ClientError::Io {
        addr: addr.to_owned(),
        source,
    };
    let run = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        let req = format!(
            "{method} {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: greylist-filter\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.map_err(io)?;
        let mut buf = Vec::new();
        // Bounded: the admin answers are small; 16 MiB is far beyond any of them.
        (&mut s)
            .take(16 << 20)
            .read_to_end(&mut buf)
            .await
            .map_err(io)?;
        parse_response(&buf).ok_or_else(|| ClientError::Malformed(addr.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .map_err(|_| ClientError::Timeout(addr.to_owned()))?
}

/// Splits an HTTP/1.1 response into status and (de-chunked) body.
fn parse_response(buf: &[u8]) -> Option<(u16, String)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(buf.get(..end)?).ok()?;
    let body = buf.get(end + 4..)?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let size_line = std::str::from_utf8(b.get(..nl)?).ok()?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        b = b.get(nl + 2..)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encoding() {
        assert_eq!(
            encode_query_value("prvs=12ab=a+b@x.org"),
            "prvs%3D12ab%3Da%2Bb%40x.org"
        );
        assert_eq!(encode_query_value("<>"), "%3C%3E");
    }

    #[test]
    fn responses_plain_and_chunked() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").unwrap();
        assert_eq!(r, (200, "ok".into()));
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r, (404, "abcde".into()));
        assert!(parse_response(b"garbage").is_none());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
                .is_none()
        );
    }

    #[test]
    fn metrics_text_is_prometheus_shaped() {
        let m = crate::metrics::Metrics::default();
        m.record_decision(&Decision::Bypass(crate::policy::BypassReason::Loopback));
        m.record_store_latency(Duration::from_micros(50));
        m.record_store_latency(Duration::from_secs(3));
        let text = render_metrics(
            &m.snapshot(),
            Some(&StoreStats {
                tuples: 5,
                pending: 2,
                hosts: 1,
            }),
            false,
            &[
                ("partners".to_owned(), "whitelist", 7),
                ("say \"hi\"\\".to_owned(), "continue", 0),
            ],
        );
        assert!(
            text.contains("greylist_decisions_total{outcome=\"bypass\",reason=\"loopback\"} 1")
        );
        assert!(
            text.contains("greylist_acl_matches_total{rule=\"partners\",action=\"whitelist\"} 7")
        );
        assert!(text.contains(
            "greylist_acl_matches_total{rule=\"say \\\"hi\\\"\\\\\",action=\"continue\"} 0"
        ));
        assert!(
            !render_metrics(&m.snapshot(), None, false, &[]).contains("greylist_acl_matches_total")
        );
        assert!(text.contains("greylist_store_latency_seconds_bucket{le=\"0.0001\"} 1"));
        assert!(text.contains("greylist_store_latency_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("greylist_store_latency_seconds_count 2"));
        assert!(text.contains("greylist_records{kind=\"pending\"} 2"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }
}
