//! One structured log event per decision, and the date format of the `X-Greylist` header.

use std::net::IpAddr;

use crate::policy::Decision;
use crate::tuple::Key;

/// The tracing target of decision events (filter with `greylist::decision=info`).
pub const TARGET: &str = "greylist::decision";

/// Seconds until a greylisted tuple may pass (0 for other decisions).
pub fn time_left(d: &Decision) -> u64 {
    match d {
        Decision::Greylist { retry_after, .. } => *retry_after,
        _ => 0,
    }
}

/// Emits the decision event: fields `queue_id`, `client`, `sender` (raw, as the client
/// sent it), `recipient`, `key`, `decision`, `reason`, `acl` (the `[[acl]]` rule that
/// decided, or `-`), `time_left` (seconds), `dry_run`.
#[allow(clippy::too_many_arguments)]
pub fn log_decision(
    queue_id: Option<&str>,
    client: Option<IpAddr>,
    sender: &str,
    recipient: &str,
    key: Option<&Key>,
    decision: &Decision,
    acl: Option<&str>,
    dry_run: bool,
) {
    tracing::info!(
        target: TARGET,
        queue_id = queue_id.unwrap_or("-"),
        client = %client.map_or_else(|| "-".to_owned(), |c| c.to_string()),
        sender,
        recipient,
        key = ?key.map_or_else(String::new, ToString::to_string),
        decision = %decision.label(),
        reason = %decision.reason(),
        acl = acl.unwrap_or("-"),
        time_left = time_left(decision),
        dry_run,
        "greylist decision"
    );
}

/// Formats unix seconds as an RFC 5322 date in UTC: `Thu, 01 Jan 1970 00:00:00 +0000`.
pub fn rfc5322_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS.get((days % 7) as usize).unwrap_or(&"Thu"),
        d,
        MONTHS.get(m.saturating_sub(1) as usize).unwrap_or(&"Jan"),
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), proleptic Gregorian.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_700_000_000),
            "Tue, 14 Nov 2023 22:13:20 +0000"
        );
        assert_eq!(
            rfc5322_date(4_102_444_799),
            "Thu, 31 Dec 2099 23:59:59 +0000"
        );
    }
}
