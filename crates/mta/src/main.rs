use std::process::ExitCode;

fn main() -> ExitCode {
    mta::cli_main(std::env::args_os().collect())
}
