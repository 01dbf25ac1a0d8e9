//! `flotilla-hub`: the hub server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flotilla_hub::config::{Flags, HubConfig};

const AFTER_HELP: &str = "\
Start on embedded defaults (keys and an admin token are created on first start):
  flotilla-hub serve --data-dir ./hub-data --api-listen 127.0.0.1:0

Start with QUIC sync on a free loopback port too:
  flotilla-hub serve --data-dir ./hub-data --api-listen 127.0.0.1:0 --sync-listen 127.0.0.1:0

Configuration: a TOML file (--config or FLOTILLA_HUB_CONFIG), then environment
(FLOTILLA_HUB_DATA_DIR, FLOTILLA_HUB_KEYS_DIR, FLOTILLA_HUB_API_LISTEN,
FLOTILLA_HUB_MAX_UPLOAD_BYTES, FLOTILLA_HUB_SYNC_LISTEN or FLOTILLA_SYNC_LISTEN,
FLOTILLA_HUB_SYNC_ADVERTISE),
then flags. Logs: FLOTILLA_LOG (e.g. info).

Each bound address is one line on stdout:
  flotilla-hub: API listening on http://ADDR
  flotilla-hub: sync listening on ADDR (QUIC)

Exit codes: 0 clean shutdown, 2 bad usage or configuration, 1 runtime failure.";

/// The Flotilla hub: model registry, signing, REST API.
#[derive(Debug, Parser)]
#[command(name = "flotilla-hub", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub.
    Serve {
        /// TOML configuration file.
        #[arg(long, env = "FLOTILLA_HUB_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory (database, chunks, uploads, keys by default).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// API address; port 0 picks a free port (the printed line says which).
        #[arg(long)]
        api_listen: Option<String>,
        /// QUIC sync address (UDP); port 0 picks a free port (the printed line
        /// says which).
        #[arg(long)]
        sync_listen: Option<String>,
    },
    /// Print the OpenAPI document of the REST API.
    Openapi,
}

fn main() -> ExitCode {
    flotilla_hub::init_logging("info");
    flotilla_net::tls::install_default_provider();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Command::Openapi => match serde_json::to_string_pretty(&flotilla_hub::api::openapi()) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        Command::Serve {
            config,
            data_dir,
            api_listen,
            sync_listen,
        } => {
            let text = match config.as_ref().map(std::fs::read_to_string).transpose() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: cannot read config file: {e}");
                    return ExitCode::from(2);
                }
            };
            let env = |k: &str| std::env::var(k).ok();
            let config = match HubConfig::resolve(
                text.as_deref(),
                &env,
                &Flags {
                    data_dir,
                    api_listen,
                    sync_listen,
                },
            ) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let result = runtime.block_on(async {
                let hub = flotilla_hub::server::start(&config).await?;
                // Lines scripts and tests read to learn the bound addresses.
                println!("flotilla-hub: API listening on http://{}", hub.api_addr);
                println!("flotilla-hub: sync listening on {} (QUIC)", hub.sync_addr);
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                hub.serve(flotilla_hub::server::shutdown_signal()).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
