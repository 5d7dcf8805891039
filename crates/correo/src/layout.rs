//! The embedded default stack: where its files live, its configuration, its
//! certificates and its demo accounts.

use anyhow::{Context, Result, bail};
use rand::Rng;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The single domain the embedded default serves.
pub const DOMAIN: &str = "example.test";
/// Demo users created on first start.
pub const DEMO_USERS: [&str; 2] = ["alice", "bob"];

/// Every port of the default stack, all on 127.0.0.1.
pub struct Ports {
    pub submission_starttls: u16,
    pub submission_tls: u16,
    pub inbound_smtp: u16,
    pub mta_grpc: u16,
    pub mda_grpc: u16,
    pub mailbox: u16,
}

pub const PORTS: Ports = Ports {
    submission_starttls: 1587,
    submission_tls: 1465,
    inbound_smtp: 2525,
    mta_grpc: 2701,
    mda_grpc: 2702,
    mailbox: 2743,
};

/// Paths of a prepared stack.
pub struct Stack {
    pub data: PathBuf,
    pub certs: PathBuf,
    pub config_dir: PathBuf,
}

/// A role the launcher starts, in start order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Mda,
    Mta,
    Msa,
}

impl Role {
    pub const START_ORDER: [Role; 3] = [Role::Mda, Role::Mta, Role::Msa];

    pub fn name(self) -> &'static str {
        match self {
            Role::Mda => "mda",
            Role::Mta => "mta",
            Role::Msa => "msa",
        }
    }

    /// The port that answers once the role is ready to serve.
    pub fn ready_port(self) -> u16 {
        match self {
            Role::Mda => PORTS.mda_grpc,
            Role::Mta => PORTS.mta_grpc,
            Role::Msa => PORTS.submission_starttls,
        }
    }
}

/// Creates the CA and one certificate per role; returns how many files were new.
pub fn ensure_certs(dir: &Path, extra_hosts: &[String]) -> Result<usize> {
    let mut made =
        usize::from(correo_runtime::pki::ensure_ca(dir).context("create the private CA")?);
    for role in ["mda", "mta", "msa"] {
        let mut hosts: Vec<&str> = vec![role, "localhost", "127.0.0.1"];
        hosts.extend(extra_hosts.iter().map(String::as_str));
        let new = correo_runtime::pki::ensure_leaf(dir, role, &hosts)
            .with_context(|| format!("create the {role} certificate"))?;
        made += usize::from(new);
    }
    Ok(made)
}

impl Stack {
    /// Creates directories, certificates and configuration files that are
    /// missing; existing files are kept, so an operator's edits survive.
    pub fn prepare(data: &Path) -> Result<Stack> {
        std::fs::create_dir_all(data).with_context(|| format!("create {}", data.display()))?;
        let data = data
            .canonicalize()
            .with_context(|| format!("resolve {}", data.display()))?;
        let stack = Stack {
            certs: data.join("certs"),
            config_dir: data.join("config"),
            data,
        };
        ensure_certs(&stack.certs, &[])?;
        std::fs::create_dir_all(&stack.config_dir)?;
        std::fs::create_dir_all(stack.data.join("mua"))?;
        write_if_missing(&stack.config_path(Role::Mda), &stack.mda_config())?;
        write_if_missing(&stack.config_path(Role::Mta), &stack.mta_config())?;
        write_if_missing(&stack.config_path(Role::Msa), &stack.msa_config())?;
        for user in DEMO_USERS {
            write_if_missing(&stack.mua_profile(user), &stack.mua_config(user))?;
        }
        Ok(stack)
    }

    pub fn config_path(&self, role: Role) -> PathBuf {
        self.config_dir.join(format!("{}.toml", role.name()))
    }

    pub fn mua_profile(&self, user: &str) -> PathBuf {
        self.data.join("mua").join(format!("{user}.toml"))
    }

    pub fn demo_accounts_path(&self) -> PathBuf {
        self.data.join("demo-accounts.txt")
    }

    fn tls_section(&self, role: &str) -> String {
        let certs = self.certs.display();
        format!(
            "[tls]\nca = \"{certs}/ca.pem\"\ncert = \"{certs}/{role}.pem\"\nkey = \"{certs}/{role}.key\"\n"
        )
    }

    fn mda_config(&self) -> String {
        format!(
            "# MDA of the embedded default stack (see docs/ARCHITECTURE.md)\n\
             data_dir = \"{data}/mda\"\nhostname = \"mda.{DOMAIN}\"\n\n\
             [grpc]\nlisten = \"127.0.0.1:{grpc}\"\n\n\
             [mailbox]\nlisten = \"127.0.0.1:{mailbox}\"\n\n\
             [metrics]\nlisten = \"127.0.0.1:2782\"\n\n{tls}",
            data = self.data.display(),
            grpc = PORTS.mda_grpc,
            mailbox = PORTS.mailbox,
            tls = self.tls_section("mda"),
        )
    }

    fn mta_config(&self) -> String {
        format!(
            "# MTA of the embedded default stack (see docs/ARCHITECTURE.md)\n\
             hostname = \"mx.{DOMAIN}\"\nnode = \"mta-1\"\ndata_dir = \"{data}/mta\"\nlocal_domains = [\"{DOMAIN}\"]\n\n\
             [smtp]\nlisten = [\"127.0.0.1:{smtp}\"]\nstarttls = true\n\n\
             [grpc]\nlisten = \"127.0.0.1:{grpc}\"\n\n{tls}\n\
             [mda]\nendpoint = \"https://127.0.0.1:{mda}\"\nserver_name = \"mda\"\n\n\
             [dns]\n# empty: the system resolver\nnameservers = []\n\n\
             [metrics]\nlisten = \"127.0.0.1:2781\"\n",
            data = self.data.display(),
            smtp = PORTS.inbound_smtp,
            grpc = PORTS.mta_grpc,
            mda = PORTS.mda_grpc,
            tls = self.tls_section("mta"),
        )
    }

    fn msa_config(&self) -> String {
        format!(
            "# MSA of the embedded default stack (see docs/ARCHITECTURE.md)\n\
             hostname = \"msa.{DOMAIN}\"\n\n\
             [submission]\nstarttls_listen = [\"127.0.0.1:{starttls}\"]\ntls_listen = [\"127.0.0.1:{tls_port}\"]\n\n{tls}\n\
             [directory]\nendpoint = \"https://127.0.0.1:{mda}\"\nserver_name = \"mda\"\n\n\
             [mta]\nendpoints = [\"127.0.0.1:{mta}\"]\nserver_name = \"mta\"\n\n\
             # health, reflection and Journey for operators (mutual TLS)\n\
             [grpc]\nlisten = \"127.0.0.1:2703\"\n\n\
             [metrics]\nlisten = \"127.0.0.1:2783\"\n\n\
             [journey]\nlog = \"{data}/msa/journey.log\"\n",
            data = self.data.display(),
            starttls = PORTS.submission_starttls,
            tls_port = PORTS.submission_tls,
            mda = PORTS.mda_grpc,
            mta = PORTS.mta_grpc,
            tls = self.tls_section("msa"),
        )
    }

    fn mua_config(&self, user: &str) -> String {
        format!(
            "# MUA profile for {user}@{DOMAIN}; the password comes from CORREO_PASSWORD or a prompt\n\
             address = \"{user}@{DOMAIN}\"\nca = \"{certs}/ca.pem\"\n\n\
             [submission]\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"starttls\"\nserver_name = \"localhost\"\n\n\
             [mailbox]\nendpoint = \"https://127.0.0.1:{mailbox}\"\nserver_name = \"mda\"\n",
            certs = self.certs.display(),
            port = PORTS.submission_starttls,
            mailbox = PORTS.mailbox,
        )
    }

    /// Creates the demo accounts on first start with fresh random passwords,
    /// through the MDA's own `user add` command, and records them in
    /// `demo-accounts.txt` (mode 0600).
    pub async fn ensure_demo_accounts(&self, self_exe: &Path) -> Result<()> {
        let path = self.demo_accounts_path();
        if path.exists() {
            return Ok(());
        }
        let mut lines = String::new();
        for user in DEMO_USERS {
            let address = format!("{user}@{DOMAIN}");
            let password = random_password();
            add_user(self_exe, &self.config_path(Role::Mda), &address, &password).await?;
            lines.push_str(&format!("{address} {password}\n"));
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))?;
        file.write_all(lines.as_bytes())?;
        file.sync_all()?;
        Ok(())
    }

    /// Address and password of every demo account.
    pub fn demo_accounts(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.demo_accounts_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(a, p)| (a.to_string(), p.to_string()))
            .collect()
    }
}

async fn add_user(self_exe: &Path, mda_config: &Path, address: &str, password: &str) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(self_exe)
        .arg("mda")
        .arg("--config")
        .arg(mda_config)
        .args(["user", "add", address, "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("run `mda user add`")?;
    let mut stdin = child.stdin.take().context("stdin of `mda user add`")?;
    stdin.write_all(format!("{password}\n").as_bytes()).await?;
    drop(stdin);
    let status = child.wait().await?;
    if !status.success() {
        bail!("`mda user add {address}` failed ({status})");
    }
    Ok(())
}

pub(crate) fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..20)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn write_if_missing(path: &Path, contents: &str) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    std::fs::write(path, contents).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_writes_configs_once_and_keeps_edits() {
        let dir = tempfile::tempdir().unwrap();
        let stack = Stack::prepare(dir.path()).unwrap();
        let mta = stack.config_path(Role::Mta);
        let text = std::fs::read_to_string(&mta).unwrap();
        assert!(text.contains("local_domains = [\"example.test\"]"));
        std::fs::write(&mta, "# edited\n").unwrap();
        Stack::prepare(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&mta).unwrap(), "# edited\n");
        assert!(stack.certs.join("msa.key").exists());
    }

    #[test]
    fn passwords_are_random_and_long() {
        let (a, b) = (random_password(), random_password());
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
    }
}
