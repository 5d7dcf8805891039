//! The `mda` account commands, run as the real binary.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn mda(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mda"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("CORREO_MDA__DATA_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may exit before reading (a refused address): a closed
    // pipe here is not a failure.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn fails(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "unexpected success; stderr: {stderr}"
    );
    assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mda.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nhostname = \"mda.example.test\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    (dir, config)
}

#[test]
fn users_and_aliases_round_trip() {
    let (dir, config) = setup();
    assert!(ok(&mda(&config, &["user", "list"], "")).is_empty());
    assert_eq!(
        ok(&mda(
            &config,
            &["user", "add", "Alice@Example.TEST", "--password-stdin"],
            "pw one\n"
        )),
        "user alice@example.test added\n"
    );
    ok(&mda(
        &config,
        &["user", "add", "bob@example.test", "--password-stdin"],
        "pw\r\n",
    ));
    ok(&mda(
        &config,
        &[
            "alias",
            "add",
            "postmaster@example.test",
            "alice@example.test",
        ],
        " ",
    ));
    assert_eq!(
        ok(&mda(&config, &["user", "list"], "")),
        "alice@example.test\taliases: postmaster@example.test\nbob@example.test\n"
    );
    assert_eq!(
        ok(&mda(&config, &["alias", "list"], "")),
        "postmaster@example.test -> alice@example.test\n"
    );

    // The stored hash is argon2id and matches the password without its newline.
    let file = mda::accounts::AccountsFile::in_dir(&dir.path().join("data"));
    let acc = file.load().unwrap();
    let alice = mda::address::Address::parse("alice@example.test").unwrap();
    let hash = &acc.users[&alice].password_hash;
    assert!(hash.starts_with("$argon2id$"));
    assert!(mda::auth::verify_password(hash, "pw one"));

    let out = mda(&config, &["user", "del", "alice@example.test"], "");
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("alias postmaster@example.test now leads nowhere")
    );
    assert_eq!(
        ok(&mda(&config, &["user", "list"], "")),
        "bob@example.test\n"
    );
    ok(&mda(
        &config,
        &["alias", "del", "postmaster@example.test"],
        "",
    ));
    assert!(ok(&mda(&config, &["alias", "list"], "")).is_empty());
}

#[test]
fn clear_errors() {
    let (_dir, config) = setup();
    fails(
        &mda(
            &config,
            &["user", "add", "../../x@example.test", "--password-stdin"],
            "pw\n",
        ),
        "address `../../x@example.test`: local part may contain only",
    );
    fails(
        &mda(
            &config,
            &["user", "add", "..x@example.test", "--password-stdin"],
            "pw\n",
        ),
        "local part may not start or end with `.`",
    );
    fails(
        &mda(
            &config,
            &["user", "add", "a@example.test", "--password-stdin"],
            "\n",
        ),
        "empty password",
    );
    ok(&mda(
        &config,
        &["user", "add", "a@example.test", "--password-stdin"],
        "pw\n",
    ));
    fails(
        &mda(
            &config,
            &["user", "add", "A@example.test", "--password-stdin"],
            "pw\n",
        ),
        "already exists",
    );
    fails(
        &mda(&config, &["user", "del", "zz@example.test"], ""),
        "no such user",
    );
    fails(
        &mda(
            &config,
            &["alias", "add", "x@example.test", "nobody@example.test"],
            "",
        ),
        "does not lead to a user",
    );
    fails(
        &mda(
            &config,
            &["alias", "add", "a@example.test", "a@example.test"],
            "",
        ),
        "is a user",
    );
    fails(
        &mda(&config, &["user", "frobnicate"], ""),
        "unrecognized subcommand",
    );

    std::fs::write(
        &config,
        "hostname = \"h.test\"\n[grpc]\nlisten = \"nowhere\"\n",
    )
    .unwrap();
    fails(&mda(&config, &["user", "list"], ""), "grpc.listen");
    std::fs::write(&config, "hostname = \"h.test\"\nbogus = 1\n").unwrap();
    fails(&mda(&config, &["user", "list"], ""), "bogus");
}
