//! The `tollgate` command: look inside a store (also one a running gateway holds open), change
//! one key, and a load generator. `tollgate --help` lists the subcommands, `tollgate help
//! SUBCOMMAND` explains one; `docs/CLI.md` documents the JSON output.

mod bench;
mod keys;
mod look;
#[cfg(feature = "redis")]
mod peers;
mod plot;
mod progress;
mod scaling;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// The result of a subcommand: exit 0, or the error printed as one line and exit 1.
type Res = Result<(), Box<dyn std::error::Error>>;

const LIVE_NOTE: &str = "Works on a store that a running gateway holds open: the file is read \
through a read-only view that takes no lock and writes nothing. The view is a snapshot that \
may miss writes made while it reads.";

/// Look inside a tollgate store file, change one key, or generate load.
///
/// stat, verify, dump and inspect work on a store that a running gateway holds open (a
/// read-only snapshot, nothing written); compact and delete need the store to themselves.
#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    propagate_version = true,
    arg_required_else_help = true,
    after_help = "Examples:\n  tollgate stat tollgate-data/gateway.tg\n  tollgate inspect tollgate-data/gateway.tg tok_demo --group pbx --limit 60/1m\n  tollgate verify tollgate-data/gateway.tg --json\n  tollgate help inspect"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Entries by kind (live and expired), file size, segments, free space.
    #[command(
        long_about = format!("Entries by kind (live and expired), file size, segments, free space, and what opening the file found.\n\n{LIVE_NOTE}"),
        after_help = "Example:\n  tollgate stat tollgate-data/gateway.tg --json | jq .window_entries"
    )]
    Stat {
        /// The store file.
        file: PathBuf,
        /// One JSON document instead of text (fields in docs/CLI.md).
        #[arg(long)]
        json: bool,
    },
    /// Check every entry and stored response; exit 1 on any corruption.
    #[command(
        long_about = format!("Check every entry and every stored response (crc32 and structure), and the file's length against its header. Prints a summary first (entries checked, corrupt entries by kind, bytes affected, whether the file is cut short), then the first 20 findings. Exit 0 when clean, 1 on any corruption.\n\n{LIVE_NOTE}"),
        after_help = "Example:\n  tollgate verify tollgate-data/gateway.tg || echo corrupt"
    )]
    Verify {
        /// The store file.
        file: PathBuf,
        /// Print every finding, not only the first 20.
        #[arg(long)]
        all: bool,
        /// One JSON document instead of text (fields in docs/CLI.md).
        #[arg(long)]
        json: bool,
    },
    /// Every live entry as a JSON line.
    #[command(
        long_about = format!("Every live entry (window counters and idempotency records) as one JSON object per line.\n\n{LIVE_NOTE}"),
        after_help = "Example:\n  tollgate dump tollgate-data/gateway.tg | grep '\"kind\":\"idempotency\"'"
    )]
    Dump {
        /// The store file.
        file: PathBuf,
        /// JSON lines (the only output of dump; accepted for symmetry with the others).
        #[arg(long)]
        json: bool,
    },
    /// What the store knows about one key: every window, or an idempotency record.
    #[command(
        long_about = format!("What the store knows about one key. A rate-limit key: every window with its limit, used, left, reset time and sub-window counts (the file does not keep a bucketed window's limit: give the policy's limits with --limit to see limit and left). With --group, KEY is a bearer token and the counters are those a gateway keeps for (token, group). With --scope, KEY is an Idempotency-Key (a UUID) and the record's state is shown: in flight with its lease deadline, or completed with its status and the time left before it expires.\n\n{LIVE_NOTE}"),
        after_help = "Examples:\n  tollgate inspect tollgate-data/gateway.tg tok_demo --group pbx --limit 60/1m\n  tollgate inspect tollgate-data/bench.tg 'tok_000000000000000000000000002a:pbx' --limit 60/1m\n  tollgate inspect tollgate-data/gateway.tg 4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00 --scope token-abc --json"
    )]
    Inspect {
        /// The store file.
        file: PathBuf,
        /// The rate-limit key, or with --scope the Idempotency-Key.
        key: String,
        /// The idempotency scope (token or account): inspect a record instead of counters.
        #[arg(long, value_name = "S", conflicts_with = "group")]
        scope: Option<String>,
        /// A gateway endpoint group: KEY is a bearer token, and the counters are those the
        /// gateway keeps for (token, group).
        #[arg(long, value_name = "NAME")]
        group: Option<String>,
        /// A limit of the key's policy, LIMIT/WINDOW (60/1m, 1000/1h, 5/10s:exact); repeat for
        /// each window.
        #[arg(long = "limit", value_name = "LIMIT/WINDOW", value_parser = keys::parse_limit)]
        limits: Vec<tollgate::Limit>,
        /// One JSON document instead of text (fields in docs/CLI.md).
        #[arg(long)]
        json: bool,
    },
    /// Remove one key's counters, or with --scope one idempotency record.
    #[command(
        long_about = "Remove one key's counters (its next request starts from a full quota), or with --scope one idempotency record (a cached response is forgotten: the next request with the key runs again). Needs the writer lock: stop the process that holds the store, or call Store::delete_key / Store::delete_record from its admin endpoint. Refuses without --yes.",
        after_help = "Example:\n  tollgate delete tollgate-data/gateway.tg 4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00 --scope token-abc --yes"
    )]
    Delete {
        /// The store file.
        file: PathBuf,
        /// The rate-limit key, or with --scope the Idempotency-Key.
        key: String,
        /// The idempotency scope: delete a record instead of counters.
        #[arg(long, value_name = "S", conflicts_with = "group")]
        scope: Option<String>,
        /// A gateway endpoint group: KEY is a bearer token, and the counters are those the
        /// gateway keeps for (token, group).
        #[arg(long, value_name = "NAME")]
        group: Option<String>,
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
    /// Expire and compact now; print the stats before and after.
    #[command(
        long_about = "Expire every expired entry, compact the response area, and print the stats before and after. Needs the writer lock: it fails, saying so, while another process holds the store open.",
        after_help = "Example:\n  tollgate compact tollgate-data/bench.tg"
    )]
    Compact {
        /// The store file.
        file: PathBuf,
    },
    /// A load generator on the seed policies, with peers in the same run.
    #[command(
        long_about = "A db_bench-style load generator: Zipf-distributed tokens on the seed policies' routes, idempotency keys and retries, on a fresh store under --data; then the same sequence on the peers built into this command."
    )]
    Bench(bench::Config),
    /// Cost per check vs keys, threads and windows; bytes per key; a plot.
    #[command(
        long_about = "How the cost of a check grows with keys (1k to 10M), threads and windows per key, and the bytes a key takes. Writes scaling.csv and scaling.svg to --out."
    )]
    Scaling(scaling::Config),
    /// Shell completions for bash, zsh, fish, elvish or powershell, on standard output.
    #[command(
        after_help = "Example:\n  tollgate completions bash > /etc/bash_completion.d/tollgate"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    let result = match cli.cmd {
        Cmd::Stat { file, json } => exists(&file).and_then(|()| look::stat(&file, json)),
        Cmd::Verify { file, all, json } => {
            return match exists(&file).and_then(|()| look::verify(&file, all, json)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => fail("verify", e),
            };
        }
        Cmd::Dump { file, json: _ } => exists(&file).and_then(|()| look::dump(&file)),
        Cmd::Inspect {
            file,
            key,
            scope,
            group,
            limits,
            json,
        } => exists(&file).and_then(|()| {
            keys::inspect(
                &file,
                &key,
                scope.as_deref(),
                group.as_deref(),
                &limits,
                json,
            )
        }),
        Cmd::Delete {
            file,
            key,
            scope,
            group,
            yes,
        } => {
            if !yes {
                eprintln!(
                    "tollgate delete: refusing without --yes (this removes {}; see 'tollgate delete --help')",
                    match &scope {
                        Some(s) => format!("the idempotency record {key} of scope {s}"),
                        None => match &group {
                            Some(g) => format!("every counter of the token {key} in group {g}"),
                            None => format!("every counter of the key {key}"),
                        },
                    }
                );
                return ExitCode::from(2);
            }
            exists(&file)
                .and_then(|()| keys::delete(&file, &key, scope.as_deref(), group.as_deref()))
        }
        Cmd::Compact { file } => exists(&file).and_then(|()| look::compact(&file)),
        Cmd::Bench(c) => bench::run(&c),
        Cmd::Scaling(c) => scaling::run(&c),
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tollgate",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Missing>() => {
            eprintln!("tollgate: {e}");
            ExitCode::from(2)
        }
        Err(e) => fail("", e),
    }
}

/// A usage error as one line (exit 2); help and version as clap prints them (exit 0).
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(if e.exit_code() == 0 { 0 } else { 2 })
        }
        _ => {
            let text = e.render().to_string();
            let mut lines = text.lines();
            let mut first = lines
                .next()
                .unwrap_or("error: bad arguments")
                .trim_end()
                .to_string();
            // "the following required arguments were not provided:" lists them below.
            if first.ends_with(':') {
                let listed: Vec<&str> = lines
                    .take_while(|l| !l.trim().is_empty())
                    .map(str::trim)
                    .collect();
                first = format!("{} {}", first, listed.join(" "));
            }
            let help = match subcommand_of(std::env::args().skip(1)) {
                Some(sub) => format!("tollgate {sub} --help"),
                None => "tollgate --help".to_string(),
            };
            eprintln!(
                "tollgate: {} (see '{help}')",
                first.trim_start_matches("error: ")
            );
            ExitCode::from(2)
        }
    }
}

/// The subcommand a command line names: its first argument that is not an option, if that is
/// one of the subcommands (not `help`); `None` otherwise (`tollgate --frob`, `tollgate
/// frobnicate`), so that a usage error points at the help that explains it.
fn subcommand_of(args: impl IntoIterator<Item = String>) -> Option<String> {
    let first = args.into_iter().find(|a| !a.starts_with('-'))?;
    let cli = Cli::command();
    let known = cli
        .get_subcommands()
        .any(|c| c.get_name() == first && first != "help");
    known.then_some(first)
}

fn fail(what: &str, e: Box<dyn std::error::Error>) -> ExitCode {
    if e.is::<Missing>() {
        eprintln!("tollgate: {e}");
        return ExitCode::from(2);
    }
    if what.is_empty() {
        eprintln!("tollgate: {e}");
    } else {
        eprintln!("tollgate {what}: {e}");
    }
    ExitCode::FAILURE
}

/// A store file that is not there (a usage error: exit 2).
#[derive(Debug)]
struct Missing(PathBuf);

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: no such file", self.0.display())
    }
}

impl std::error::Error for Missing {}

fn exists(path: &Path) -> Res {
    if path.is_file() {
        Ok(())
    } else {
        Err(Box::new(Missing(path.to_path_buf())))
    }
}
