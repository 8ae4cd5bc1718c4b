//! `suanli`: one binary, many roles. Parses the command line and hands over to [`suanli::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = suanli::cli::Cli::parse();
    suanli::cli::init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let code = runtime.block_on(suanli::cli::run(cli));
    std::process::ExitCode::from(code)
}
