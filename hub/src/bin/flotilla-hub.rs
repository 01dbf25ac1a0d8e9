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
FLOTILLA_HUB_SYNC_ADVERTISE, FLOTILLA_HUB_MQTT_MODE, FLOTILLA_HUB_MQTT_LISTEN,
FLOTILLA_HUB_MQTT_URL, FLOTILLA_HUB_MQTT_FLEET, FLOTILLA_HUB_MQTT_PASSWORD),
then flags. Logs: FLOTILLA_LOG (default info,rumqttd=off: the embedded
broker's own log is off unless asked for).

Telemetry over MQTT: an embedded broker on 127.0.0.1:1884 by default
(--mqtt-listen), or an external one (--mqtt-mode external --mqtt-url
mqtt://127.0.0.1:1883).

Each bound address is one line on stdout:
  flotilla-hub: API listening on http://ADDR
  flotilla-hub: sync listening on ADDR (QUIC)
  flotilla-hub: mqtt listening on ADDR        (external: mqtt broker ADDR (external))
  flotilla-hub: mqtt tls listening on ADDR (device certificates)   ([mqtt] tls_listen or FLOTILLA_HUB_MQTT_TLS_LISTEN)

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
        /// MQTT broker: `embedded` (rumqttd inside the hub, the default) or
        /// `external` (see --mqtt-url).
        #[arg(long, value_name = "MODE")]
        mqtt_mode: Option<String>,
        /// Embedded broker address; port 0 picks a free port.
        #[arg(long, value_name = "ADDR")]
        mqtt_listen: Option<String>,
        /// External broker, mqtt://HOST:PORT.
        #[arg(long, value_name = "URL")]
        mqtt_url: Option<String>,
        /// Fleet name: topics live under flotilla/v1/FLEET/.
        #[arg(long)]
        fleet: Option<String>,
    },
    /// Print the OpenAPI document of the REST API.
    Openapi,
}

fn main() -> ExitCode {
    // rumqttd logs every client disconnect at ERROR; its bind errors are
    // checked by the hub itself. FLOTILLA_LOG=info,rumqttd=info shows them.
    flotilla_hub::init_logging("info,rumqttd=off");
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
            mqtt_mode,
            mqtt_listen,
            mqtt_url,
            fleet,
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
                    mqtt_mode,
                    mqtt_listen,
                    mqtt_url,
                    fleet,
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
                // Installed before the addresses are announced (see
                // `shutdown_signal`).
                let shutdown = flotilla_hub::server::shutdown_signal();
                // Lines scripts and tests read to learn the bound addresses.
                println!("flotilla-hub: API listening on http://{}", hub.api_addr);
                println!("flotilla-hub: sync listening on {} (QUIC)", hub.sync_addr);
                if hub.telemetry.embedded {
                    println!(
                        "flotilla-hub: mqtt listening on {}",
                        hub.telemetry.broker_addr
                    );
                    if let Some(tls) = hub.telemetry.tls_addr {
                        println!("flotilla-hub: mqtt tls listening on {tls} (device certificates)");
                    }
                } else {
                    println!(
                        "flotilla-hub: mqtt broker {} (external)",
                        hub.telemetry.broker_addr
                    );
                }
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                hub.serve(shutdown).await
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
