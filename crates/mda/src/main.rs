use std::process::ExitCode;

fn main() -> ExitCode {
    mda::cli_main(std::env::args_os().collect())
}
