//! The Postfix peer (`shared/peers/postfix/setup.sh`): a loopback-only
//! Postfix delivering user@bench.test into a Maildir, started and stopped in
//! the same invocation as Correo.

use crate::proc::{run_checked, wait_for_port, which};
use anyhow::{Result, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct Postfix {
    pub addr: SocketAddr,
    pub base: PathBuf,
    script: PathBuf,
}

/// Finds setup.sh: the given path, else `../shared/peers/postfix/setup.sh`
/// relative to the workspace or the current directory.
pub fn find_script(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.exists().then(|| p.to_path_buf());
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    [
        workspace.join("../shared/peers/postfix/setup.sh"),
        PathBuf::from("../shared/peers/postfix/setup.sh"),
        PathBuf::from("shared/peers/postfix/setup.sh"),
    ]
    .into_iter()
    .find(|p| p.exists())
}

impl Postfix {
    /// Runs `setup.sh PORT BASE` (it installs Postfix if missing; needs root).
    pub fn start(script: &Path, port: u16) -> Result<Postfix> {
        let base = PathBuf::from(format!("/tmp/correo-bench-postfix-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let mut cmd = Command::new("bash");
        cmd.arg(script).arg(port.to_string()).arg(&base);
        run_checked(cmd, "postfix setup.sh")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_port(addr, Duration::from_secs(20))?;
        if which("smtp-source").is_none() {
            bail!("smtp-source missing after setup.sh");
        }
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = Some(script.to_path_buf());
        Ok(Postfix {
            addr,
            base,
            script: script.to_path_buf(),
        })
    }

    pub fn maildir_new(&self) -> PathBuf {
        self.base.join("bench.test/user/new")
    }

    pub fn version() -> String {
        Command::new("postconf")
            .arg("-h")
            .arg("mail_version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
}

/// The setup script of the peer while it runs, for [`stop_running`].
static RUNNING: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Stops the peer if one runs: what an interrupted run does before it
/// exits, since the drop that normally stops it never runs.
pub fn stop_running() {
    let script = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(script) = script {
        let _ = Command::new("bash").arg(&script).arg("stop").output();
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        RUNNING.lock().unwrap_or_else(|e| e.into_inner()).take();
        let _ = Command::new("bash").arg(&self.script).arg("stop").output();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
