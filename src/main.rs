//! The `levy` binary: `levy -c FILE` runs the proxy, `levy check -c FILE` validates a config
//! and prints its route table.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pingora::server::configuration::Opt;

#[derive(Parser)]
#[command(name = "levy", version, about = "x402 paywall reverse proxy")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    pingora: Opt,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file and print the route table.
    Check {
        #[arg(short, long)]
        conf: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { conf }) => check(&conf),
        None => run(cli.pingora),
    }
}

fn check(conf: &str) -> ExitCode {
    match levy::Config::load(conf) {
        Ok(config) => {
            print!("{}", config.describe());
            println!("{conf}: ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{conf}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(mut opt: Opt) -> ExitCode {
    levy::logging::init();
    let Some(conf) = opt.conf.take() else {
        eprintln!("levy: no config file; run `levy -c conf/levy.example.yaml`");
        return ExitCode::FAILURE;
    };
    let config = match levy::Config::load(&conf) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{conf}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match levy::build_server(config, Some(opt)) {
        Ok(server) => server.run_forever(),
        Err(e) => {
            eprintln!("levy: {e}");
            ExitCode::FAILURE
        }
    }
}
