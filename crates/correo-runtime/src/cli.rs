//! The start of every role's command line.

use std::ffi::OsString;
use std::process::ExitCode;

/// Parses `args` into `C`. On `--help`/`--version` the text is printed and
/// `Err(SUCCESS)` returned; on a usage error the message is printed and
/// `Err(2)` returned, so callers just `return` the code.
pub fn parse_args<C: clap::Parser>(args: Vec<OsString>) -> Result<C, ExitCode> {
    C::try_parse_from(args).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        }
    })
}
