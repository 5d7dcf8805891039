//! The `mua` binary: all of it is in the library, [`mua::cli_main`].

use std::process::ExitCode;

fn main() -> ExitCode {
    mua::cli_main(std::env::args_os().collect())
}
