//! The `levy` binary: `levy -c FILE` runs the proxy, `levy check -c FILE` validates a config
//! and prints its route table, `levy pay URL` pays for a URL as an x402 client would,
//! `levy deploy-batcher` deploys the contract metered routes settle through.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pingora::server::configuration::Opt;

/// mimalloc: measurably faster than the system allocator for a proxy's many short-lived
/// buffers (BENCHMARKS.md; the bare Pingora baseline uses it too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Describe the config file itself.
    Config {
        #[command(subcommand)]
        what: ConfigWhat,
    },
    /// Pay for a URL as an x402 client would (v2, falling back to v1) and report each step.
    /// The payer's private key is read from the environment variable named by --key-env.
    Pay {
        url: String,
        #[arg(long, default_value = "LEVY_PAYER_KEY")]
        key_env: String,
    },
    /// Deploy levy's upto batcher on a network, owned by the settler key (read from the
    /// environment variable named by --key-env), and print the `batcher:` line to configure.
    DeployBatcher {
        #[arg(long)]
        rpc_url: String,
        #[arg(long, default_value = "LEVY_SETTLER_KEY")]
        key_env: String,
        /// x402's upto proxy (its canonical address unless a chain has it elsewhere).
        #[arg(long, default_value_t = levy::x402::UPTO_PROXY_ADDRESS)]
        proxy: alloy_primitives::Address,
    },
    /// Make a new API key for `levy.api_keys`: prints the key (give it to its holder) and
    /// the line to list it with (only its hash).
    ApiKey {
        /// The key's id, sent to the origin with each request it lets in.
        id: String,
        /// Its tier (what routes' `api_keys:` price it at). Default: `default`.
        #[arg(long)]
        tier: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigWhat {
    /// Print the JSON Schema of `levy.yaml` (for editors and validators).
    Schema,
    /// Print the configuration reference (Markdown), built from the same types.
    Reference,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { conf }) => check(&conf),
        Some(Command::Config { what }) => {
            let text = match what {
                ConfigWhat::Schema => format!("{:#}\n", levy::config::json_schema()),
                ConfigWhat::Reference => levy::config::reference_markdown(),
            };
            // A reader that stops early (`| head`) is not an error.
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
            ExitCode::SUCCESS
        }
        Some(Command::Pay { url, key_env }) => pay(&url, &key_env),
        Some(Command::DeployBatcher {
            rpc_url,
            key_env,
            proxy,
        }) => deploy_batcher(&rpc_url, &key_env, proxy),
        Some(Command::ApiKey { id, tier }) => {
            if id.is_empty() || id.chars().any(char::is_whitespace) {
                eprintln!("an API key's id is one word");
                return ExitCode::FAILURE;
            }
            let key = format!(
                "lvk_{}",
                alloy_primitives::hex::encode(alloy_primitives::B256::random())
            );
            println!("key:  {key}");
            println!(
                "line: {}",
                levy::config::key_line(&id, &key, tier.as_deref())
            );
            ExitCode::SUCCESS
        }
        None => run(cli.pingora),
    }
}

fn check(conf: &str) -> ExitCode {
    match levy::Config::load(conf) {
        Ok(config) => {
            print!("{}", config.describe());
            if let Some(settlement) = &config.settlement {
                match levy::settle::check_settler(settlement) {
                    Ok(Some(settler)) => println!(
                        "settler {settler}: each network's chain id and metered batcher owner checked"
                    ),
                    Ok(None) => {}
                    Err(e) => {
                        eprintln!("{conf}: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            println!("{conf}: ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{conf}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn pay(url: &str, key_env: &str) -> ExitCode {
    let Ok(key) = std::env::var(key_env) else {
        eprintln!("levy pay: set ${key_env} to the payer's private key (hex)");
        return ExitCode::FAILURE;
    };
    let payer = match levy::client::Payer::from_hex(&key) {
        Ok(payer) => payer,
        Err(e) => {
            eprintln!("levy pay: ${key_env}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("levy pay: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(levy::pay(url, &payer)) {
        Ok(report) => {
            print!("{}", report.lines);
            if (200..300).contains(&report.final_status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("levy pay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn deploy_batcher(rpc_url: &str, key_env: &str, proxy: alloy_primitives::Address) -> ExitCode {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("levy deploy-batcher: {e}");
        ExitCode::FAILURE
    };
    let Ok(key) = std::env::var(key_env) else {
        return fail(&format!(
            "set ${key_env} to the settler's private key (hex)"
        ));
    };
    let settler: alloy::signers::local::PrivateKeySigner = match key.trim().parse() {
        Ok(signer) => signer,
        Err(_) => return fail(&format!("${key_env} is not a hex private key")),
    };
    let owner = settler.address();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    match runtime.block_on(levy::settle::deploy::deploy_batcher(
        rpc_url, settler, proxy,
    )) {
        Ok(deployed) => {
            println!(
                "LevyBatcher deployed on chain {} at {} (transaction {}), owner {owner}, proxy {proxy}",
                deployed.chain_id, deployed.address, deployed.transaction
            );
            println!("networks.<name>.batcher: \"{}\"", deployed.address);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn run(mut opt: Opt) -> ExitCode {
    levy::init_logging();
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
    if opt.test {
        // Only the config is tested: opening the journal would take the running levy's lock
        // and replay its accept log.
        print!("{}", config.describe());
        println!("{conf}: ok");
        return ExitCode::SUCCESS;
    }
    match levy::build_server(config, Some(opt)) {
        Ok(server) => server.run_forever(),
        Err(e) => {
            eprintln!("levy: {e}");
            ExitCode::FAILURE
        }
    }
}
