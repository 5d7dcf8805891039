//! The `mda` command line: serve, and edit the account directory.

use crate::accounts::AccountsFile;
use crate::address::Address;
use crate::config::Config;
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "mda",
    version,
    about = "Correo mail delivery agent: account directory, Maildir delivery, mailbox API",
    after_help = "Without a command, serves. Environment variables CORREO_MDA__<KEY>[__<SUBKEY>] override the file."
)]
struct Cli {
    /// Configuration file (mda.toml)
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the Delivery/Directory and Mailbox gRPC listeners (the default)
    Serve,
    /// Manage users (edits <data_dir>/accounts.json; a running mda picks it up)
    #[command(subcommand)]
    User(UserCommand),
    /// Manage aliases (alias address -> user or other alias)
    #[command(subcommand)]
    Alias(AliasCommand),
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user; the password is prompted for unless --password-stdin
    Add {
        address: String,
        /// Read the password from the first line of standard input
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users with the aliases that lead to them
    List,
    /// Delete a user (the Maildir is left on disk)
    Del { address: String },
}

#[derive(Debug, Subcommand)]
enum AliasCommand {
    /// Add an alias; TARGET must be a user or an alias leading to one
    Add { alias: String, target: String },
    /// List aliases
    List,
    /// Delete an alias
    Del { alias: String },
}

/// Entry point of the `mda` binary and of `correo mda …`.
pub fn cli_main(args: Vec<OsString>) -> ExitCode {
    correo_runtime::tls::install_crypto_provider();
    let cli = match correo_runtime::cli::parse_args::<Cli>(args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mda: error: {}", render(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, joined by `: `, skipping causes whose text an
/// outer error already quotes (many errors here embed their source).
fn render(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref()).context("invalid configuration")?;
    let accounts = AccountsFile::in_dir(&config.data_dir);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
        Command::User(UserCommand::Add {
            address,
            password_stdin,
        }) => user_add(&accounts, &address, password_stdin),
        Command::User(UserCommand::List) => user_list(&accounts),
        Command::User(UserCommand::Del { address }) => user_del(&accounts, &address),
        Command::Alias(AliasCommand::Add { alias, target }) => {
            alias_add(&accounts, &alias, &target)
        }
        Command::Alias(AliasCommand::List) => alias_list(&accounts),
        Command::Alias(AliasCommand::Del { alias }) => alias_del(&accounts, &alias),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    correo_runtime::telemetry::init("mda", config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mda")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mda = crate::server::Mda::bind(&config)
            .await
            .context("cannot start")?;
        mda.run(correo_runtime::shutdown::signal())
            .await
            .context("serving failed")
    })
}

fn parse(address: &str) -> anyhow::Result<Address> {
    Ok(Address::parse(address)?)
}

fn read_password(address: &Address, from_stdin: bool) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let first = rpassword::prompt_password(format!("Password for {address}: "))
            .context("cannot read the password (use --password-stdin without a terminal)")?;
        let second = rpassword::prompt_password("Again: ").context("cannot read the password")?;
        if first != second {
            bail!("the passwords differ");
        }
        first
    };
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}

fn user_add(accounts: &AccountsFile, address: &str, password_stdin: bool) -> anyhow::Result<()> {
    let address = parse(address)?;
    // Fail before asking for a password when the answer is known already.
    let current = accounts.load()?;
    if current.users.contains_key(&address) || current.aliases.contains_key(&address) {
        bail!("{address} already exists");
    }
    let password = read_password(&address, password_stdin)?;
    // Hash outside the lock: argon2 is slow on purpose.
    let hash = crate::auth::hash_password(&password)?;
    let scram = crate::auth::scram_verifier(&password);
    accounts
        .update(|acc| {
            acc.add_user(address.clone(), hash)?;
            acc.set_scram(&address, scram)
        })
        .with_context(|| format!("cannot update {}", accounts.path().display()))?;
    println!("user {address} added");
    Ok(())
}

fn user_list(accounts: &AccountsFile) -> anyhow::Result<()> {
    let acc = accounts.load()?;
    for user in acc.users.keys() {
        let aliases = acc.aliases_of(user);
        if aliases.is_empty() {
            println!("{user}");
        } else {
            let aliases: Vec<String> = aliases.iter().map(ToString::to_string).collect();
            println!("{user}\taliases: {}", aliases.join(", "));
        }
    }
    Ok(())
}

fn user_del(accounts: &AccountsFile, address: &str) -> anyhow::Result<()> {
    let address = parse(address)?;
    let orphans = accounts
        .update(|acc| acc.remove_user(&address))
        .with_context(|| format!("cannot update {}", accounts.path().display()))?;
    println!("user {address} deleted (its Maildir is left on disk)");
    for alias in orphans {
        eprintln!(
            "warning: alias {alias} now leads nowhere; remove it with `mda alias del {alias}`"
        );
    }
    Ok(())
}

fn alias_add(accounts: &AccountsFile, alias: &str, target: &str) -> anyhow::Result<()> {
    let (alias, target) = (parse(alias)?, parse(target)?);
    accounts
        .update(|acc| acc.add_alias(alias.clone(), target.clone()))
        .with_context(|| format!("cannot update {}", accounts.path().display()))?;
    println!("alias {alias} -> {target} added");
    Ok(())
}

fn alias_list(accounts: &AccountsFile) -> anyhow::Result<()> {
    let acc = accounts.load()?;
    for (alias, target) in &acc.aliases {
        match acc.resolve(alias) {
            Some(user) if user == target => println!("{alias} -> {target}"),
            Some(user) => println!("{alias} -> {target} (-> {user})"),
            None => println!("{alias} -> {target} (broken: leads to no user)"),
        }
    }
    Ok(())
}

fn alias_del(accounts: &AccountsFile, alias: &str) -> anyhow::Result<()> {
    let alias = parse(alias)?;
    accounts
        .update(|acc| acc.remove_alias(&alias))
        .with_context(|| format!("cannot update {}", accounts.path().display()))?;
    println!("alias {alias} deleted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_commands() {
        let cli = Cli::try_parse_from([
            "mda",
            "--config",
            "f.toml",
            "user",
            "add",
            "a@b.test",
            "--password-stdin",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::User(UserCommand::Add {
                password_stdin: true,
                ..
            }))
        ));
        let cli = Cli::try_parse_from(["mda", "--config", "f.toml"]).unwrap();
        assert!(cli.command.is_none());
        let cli = Cli::try_parse_from([
            "mda", "alias", "add", "x@b.test", "a@b.test", "--config", "f",
        ])
        .unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("f")));
    }
}
