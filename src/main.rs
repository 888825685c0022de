//! The `millrace` binary: command line, configuration, start-up.
//!
//! `millrace serve [--config FILE] [flags]` runs the relay;
//! `millrace check-config FILE` validates a configuration. A bad
//! configuration is one line on stderr naming the key, and exit code 2.

mod bounce;
mod config;
mod events;
mod relay;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};

/// Millrace: an outbound bulk SMTP relay.
#[derive(Debug, Parser)]
#[command(name = "millrace", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the relay (built-in defaults when no config is given).
    Serve(ServeArgs),
    /// Validate a configuration file and exit (0 = valid, 2 = invalid).
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
}

/// Flags of `serve`; each overrides the file.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Listening address (repeatable), e.g. 127.0.0.1:2525.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Spool directory.
    #[arg(long)]
    spool: Option<PathBuf>,
    /// Our hostname (greeting, EHLO, Received).
    #[arg(long)]
    hostname: Option<String>,
    /// Reactor threads (0 = one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Send all mail to this host:port.
    #[arg(long)]
    smarthost: Option<String>,
}

fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        key: String::new(),
        problem: format!("cannot read {}: {e}", path.display()),
    })?;
    Config::from_toml(&text)
}

fn serve_config(args: &ServeArgs) -> Result<Config, ConfigError> {
    let mut cfg = match &args.config {
        Some(p) => load(p)?,
        None => Config::default(),
    };
    if !args.listen.is_empty() {
        cfg.listen = args.listen.clone();
    }
    if let Some(s) = &args.spool {
        cfg.spool_dir = s.clone();
    }
    if let Some(h) = &args.hostname {
        cfg.hostname = h.clone();
    }
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    if let Some(s) = &args.smarthost {
        cfg.delivery.smarthost = s.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

fn config_failure(
    file: Option<&std::path::Path>,
    e: &ConfigError,
) -> ExitCode {
    match file {
        Some(f) => eprintln!("millrace: bad config {}: {e}", f.display()),
        None => eprintln!("millrace: bad config: {e}"),
    }
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::CheckConfig { file } => match load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => config_failure(Some(&file), &e),
        },
        Cmd::Serve(args) => {
            let cfg = match serve_config(&args) {
                Ok(c) => c,
                Err(e) => return config_failure(args.config.as_deref(), &e),
            };
            match relay::serve(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("millrace: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
