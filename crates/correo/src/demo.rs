//! `correo demo-users`: creates demo accounts on a stack's first start,
//! through the MDA's own `mda user add --password-stdin`, and leaves existing
//! accounts alone, so a container init step can run it on every start
//! (images built `FROM scratch` have no shell to pipe a password with).

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct DemoUsers {
    pub mda_config: PathBuf,
    pub addresses: Vec<String>,
    /// Password for every new account; None = a random one each.
    pub password: Option<String>,
    /// File to append `ADDRESS PASSWORD` lines of new accounts to (mode 0600).
    pub record: Option<PathBuf>,
}

fn mda(self_exe: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(self_exe);
    cmd.arg("mda").arg("--config").arg(config);
    cmd
}

pub fn run(d: DemoUsers) -> Result<()> {
    let self_exe = std::env::current_exe().context("locate the correo binary")?;
    let out = mda(&self_exe, &d.mda_config)
        .args(["user", "list"])
        .output()
        .context("run `mda user list`")?;
    if !out.status.success() {
        bail!(
            "`mda user list` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let existing: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for address in &d.addresses {
        if existing.iter().any(|e| e.eq_ignore_ascii_case(address)) {
            println!("{address} exists");
            continue;
        }
        let password = d
            .password
            .clone()
            .unwrap_or_else(crate::layout::random_password);
        let mut child = mda(&self_exe, &d.mda_config)
            .args(["user", "add", address, "--password-stdin"])
            .stdin(Stdio::piped())
            .spawn()
            .context("run `mda user add`")?;
        child
            .stdin
            .take()
            .context("stdin of `mda user add`")?
            .write_all(format!("{password}\n").as_bytes())?;
        let status = child.wait()?;
        if !status.success() {
            bail!("`mda user add {address}` failed ({status})");
        }
        if d.password.is_none() {
            println!("demo account {address} password {password}");
        }
        if let Some(path) = &d.record {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("open {}", path.display()))?;
            file.write_all(format!("{address} {password}\n").as_bytes())?;
            file.sync_all()?;
        }
    }
    Ok(())
}
