//! topics: a persistent event log served over a JSON-first HTTP API.

mod api;
mod config;
mod http;
mod runtime;

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cfg = config::Config::parse();
    if let Err(e) = runtime::run(cfg) {
        log::error!("{e}");
        eprintln!("topics: {e}");
        std::process::exit(1);
    }
}
