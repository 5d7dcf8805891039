use std::process::ExitCode;

fn main() -> ExitCode {
    msa::cli_main(std::env::args_os().collect())
}
