//! What the three programs share: argument parsing with one-line usage
//! errors, logging set-up, and the error that ends a command.

use clap::Parser;
use std::process::ExitCode;

/// A TTL as the command line and job files write it: a humantime
/// duration above zero (`30s`, `5m`, `250ms`, `1h 30m`).
///
/// # Errors
///
/// What is wrong with it, for a person.
pub fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 30s, 5m, 250ms)"))?;
    if d.is_zero() {
        return Err("a TTL must be longer than zero (del removes a key now)".into());
    }
    Ok(d)
}

/// An error that ends a command: the message and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// 1 (not found / exists / some job lines failed) or 2 (error).
    pub code: u8,
    /// One line for stderr.
    pub message: String,
}

impl Failure {
    /// An error: exit code 2.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }

    /// A miss (absent key, existing key, failed job lines): exit code 1.
    pub fn miss(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

impl From<kvs_client::ClientError> for Failure {
    fn from(e: kvs_client::ClientError) -> Self {
        Failure::error(e.to_string())
    }
}

/// Parses the process's arguments as `A`. `--help` and `--version` print
/// to stdout and give exit code 0; a missing command prints the help to
/// stderr and gives 2; any other usage error prints one line
/// (`PROGRAM: message (see PROGRAM --help)`) and gives 2.
///
/// # Errors
///
/// The exit code to end the process with when there is nothing to run.
pub fn parse_args<A: Parser>(program: &str) -> Result<A, ExitCode> {
    parse_args_from::<A>(program, std::env::args_os())
}

/// [`parse_args`] of `args` (the program's name first).
pub fn parse_args_from<A: Parser>(
    program: &str,
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<A, ExitCode> {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    match A::try_parse_from(&args) {
        Ok(a) => Ok(a),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            Err(ExitCode::from(2))
        }
        Err(e) => {
            // The subcommand the arguments name, for a pointer to its help
            // when clap's message has no usage line to take it from.
            let subcommands: Vec<String> = A::command()
                .get_subcommands()
                .map(|c| c.get_name().to_string())
                .collect();
            let sub = args
                .iter()
                .skip(1)
                .filter_map(|a| a.to_str())
                .find(|a| subcommands.iter().any(|s| s == a));
            let command = match sub {
                Some(s) => format!("{program} {s}"),
                None => program.to_string(),
            };
            eprintln!("{program}: {}", usage_error_line(&e, &command));
            Err(ExitCode::from(2))
        }
    }
}

/// The first line of a clap usage error, without its `error: ` prefix and
/// with a pointer to the help of the command it is about (`PROGRAM --help`,
/// or `PROGRAM SUBCOMMAND --help` for a subcommand's arguments; clap's own
/// rendering spans several lines).
pub fn usage_error_line(e: &clap::Error, program: &str) -> String {
    let rendered = e.render().to_string();
    // "Usage: kvs_client get [OPTIONS] <KEY>": the command is the words
    // before the first placeholder.
    let command = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage:"))
        .map(|usage| {
            usage
                .split_whitespace()
                .take_while(|w| !w.starts_with(['[', '<', '-']))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| c.starts_with(program.split(' ').next().unwrap_or(program)))
        .unwrap_or_else(|| program.to_string());
    // The message is the first paragraph (a list of missing arguments
    // continues it on indented lines); "Usage:" and "tip:" lines follow.
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    let message = if message.is_empty() {
        "invalid arguments"
    } else {
        message
    };
    format!("{message} (see {command} --help)")
}

/// Initialises logging to stderr (`RUST_LOG`, default "info"), with colours
/// only on a terminal.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Parser)]
    #[command(name = "demo")]
    struct Demo {
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
        workers: u16,
    }

    #[derive(Debug, Parser)]
    #[command(name = "tool")]
    struct Tool {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        Get {
            key: String,
        },
        Bench {
            #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
            ops: u64,
        },
    }

    fn os(args: &[&str]) -> Vec<std::ffi::OsString> {
        args.iter().map(Into::into).collect()
    }

    #[test]
    fn a_subcommands_error_points_to_its_own_help() {
        let e = Tool::try_parse_from(["tool", "get"]).unwrap_err();
        let line = usage_error_line(&e, "tool");
        assert!(line.ends_with("(see tool get --help)"), "{line}");
        let e = Tool::try_parse_from(["tool", "frob"]).unwrap_err();
        assert!(usage_error_line(&e, "tool").ends_with("(see tool --help)"));
        // A value error has no usage line: the subcommand comes from the
        // arguments.
        assert!(parse_args_from::<Tool>("tool", os(&["tool", "bench", "--ops", "0"])).is_err());
        let e = Tool::try_parse_from(["tool", "bench", "--ops", "0"]).unwrap_err();
        let line = usage_error_line(&e, "tool bench");
        assert!(line.ends_with("(see tool bench --help)"), "{line}");
    }

    #[test]
    fn usage_errors_are_one_line_naming_the_program() {
        let e = Demo::try_parse_from(["demo", "--workers", "0"]).unwrap_err();
        let line = usage_error_line(&e, "demo");
        assert!(!line.contains('\n'), "{line}");
        assert!(line.starts_with("invalid value '0'"), "{line}");
        assert!(line.ends_with("(see demo --help)"), "{line}");
        let e = Demo::try_parse_from(["demo"]).unwrap_err();
        let line = usage_error_line(&e, "demo");
        assert!(line.contains("--workers"), "{line}");
    }
}

/// A byte count for people: `512 B`, `960 KiB`, `1.5 MiB`, `12 GiB`
/// (powers of 1024, one decimal below 10 of a unit).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut scaled = bytes as f64;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if scaled < 10.0 && scaled.fract() >= 0.05 {
        format!("{scaled:.1} {}", UNITS[unit])
    } else {
        format!("{scaled:.0} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod human_bytes_tests {
    use super::human_bytes;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1 KiB");
        assert_eq!(human_bytes(983_040), "960 KiB");
        assert_eq!(human_bytes(1536 << 10), "1.5 MiB");
        assert_eq!(human_bytes(12 << 30), "12 GiB");
        assert_eq!(human_bytes(u64::MAX), "16777216 TiB");
    }
}

/// Puts `bytes` into a JSON object as `name` (a string, when they are
/// UTF-8) or `name_base64` (standard base64, otherwise): the gateway's rule.
pub(crate) fn json_bytes(
    obj: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
    bytes: &[u8],
) {
    use base64::Engine as _;
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            obj.insert(name.into(), text.into());
        }
        Err(_) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            obj.insert(format!("{name}_base64"), b64.into());
        }
    }
}
