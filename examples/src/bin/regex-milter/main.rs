//! `regex-milter`: a milter that accepts, rejects, tempfails, discards or
//! quarantines mail by regular expression rules, compatible with the rule
//! files of OpenBSD's milter-regex.
//!
//! The rules engine lives in [`rules`] (parser and evaluator) and [`posix`]
//! (POSIX BRE/ERE to `regex` translation). This binary currently offers the
//! rule file check; serving (`--listen`) arrives with the milter server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

mod posix;
// The evaluator and the reload helper are driven by the milter glue, which is
// added together with milter-server; until then only the tests use them.
#[allow(dead_code)]
mod rules;

/// Filter mail with milter-regex rules.
#[derive(Debug, Parser)]
#[command(
    name = "regex-milter",
    version,
    about = "Filter mail with milter-regex compatible regular expression rules",
    after_help = "Serving mail (--listen SOCKET) is added together with the milter server. \
                  For now, use --check to validate a rule file."
)]
struct Cli {
    /// The rule file (milter-regex syntax).
    #[arg(long, short = 'c', value_name = "FILE")]
    rules: PathBuf,

    /// Parse the rule file, print every error as FILE:LINE:COLUMN: MESSAGE
    /// and exit non-zero if there is any.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cli.check {
        eprintln!(
            "regex-milter: serving (--listen) is not available yet; \
             it is added with the milter server. Use --check."
        );
        return ExitCode::from(2);
    }
    check(&cli.rules)
}

/// `--check`: report every error in the file, or a one-line summary.
fn check(path: &std::path::Path) -> ExitCode {
    match rules::RuleSet::load(path) {
        Ok(set) => {
            println!(
                "{}: OK, {} rule(s), decided by the {:?} stage at the latest",
                path.display(),
                set.rules().len(),
                set.decided_by_all()
            );
            ExitCode::SUCCESS
        }
        Err(rules::LoadError::Rules { path, errors }) => {
            for e in &errors {
                eprintln!("{path}:{}:{}: {}", e.line, e.column, e.kind);
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("regex-milter: {e}");
            ExitCode::FAILURE
        }
    }
}
