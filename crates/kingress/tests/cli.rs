//! The binary itself: the command-line contract, readiness, and a clean exit on SIGTERM
//! and SIGINT.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_kingress");

/// A free port on 127.0.0.1 (bound then released; the binary binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary with `args` plus free --http-listen/--admin-listen ports and waits
/// for /readyz. Returns the process and the two ports.
async fn spawn_ready(args: &[&std::ffi::OsStr], stdout: Stdio) -> (Proc, u16, u16) {
    let (http, admin) = (free_port(), free_port());
    let mut ports = vec![
        "--http-listen".to_string(),
        format!("127.0.0.1:{http}"),
        "--admin-listen".to_string(),
        format!("127.0.0.1:{admin}"),
    ];
    if args.first().is_some_and(|a| *a == "run" || *a == "demo") {
        ports.extend(["--https-listen".to_string(), format!("127.0.0.1:{}", free_port())]);
    }
    let child = Command::new(BIN)
        .args(args)
        .args(&ports)
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = Proc(child);
    let client = client();
    poll_until(WAIT, "/readyz to answer 200", || async {
        let r = client
            .get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    (child, http, admin)
}

/// GET `path` on 127.0.0.1:`port` with a Host header.
async fn get(client: &reqwest::Client, port: u16, host: &str, path: &str) -> reqwest::Response {
    client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host)
        .send()
        .await
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args(["-s", sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn help_lists_the_contract_flags() {
    let out = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--manifests",
        "--http-listen",
        "--https-listen",
        "--admin-listen",
        "127.0.0.1:8080",
        "127.0.0.1:8443",
        "127.0.0.1:10254",
        "--ingress-class",
        "--controller-class",
        "--watch-ingress-without-class",
        "--log-format",
        "--configmap",
        "--default-ssl-certificate",
        "--https-redirect-port",
        "--upstream-max-fails",
    ] {
        assert!(text.contains(flag), "run --help lacks {flag}:\n{text}");
    }
    for sub in ["echo", "demo"] {
        let out = Command::new(BIN).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub} --help");
    }
    let out = Command::new(BIN).args(["echo", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--listen") && text.contains("--name"));
}

#[test]
fn bad_arguments_fail_before_binding() {
    let out = Command::new(BIN)
        .args([
            "run",
            "--manifests",
            "/nonexistent/kingress",
            "--proxy-body-size",
            "lots",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a size"));
    let out = Command::new(BIN)
        .args(["run", "--manifests", "/nonexistent/kingress"])
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/kingress"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_and_exits_cleanly_on_sigterm_and_sigint() {
    let backend = echo("proc").await;
    let dir = tempfile::tempdir().unwrap();
    write_atomic(
        &dir.path().join("svc.yaml"),
        &service_yaml("proc", &[backend.addr().port()]),
    );
    write_atomic(
        &dir.path().join("ing.yaml"),
        &ingress_yaml("i", "proc.test", &[("/", "Prefix", "proc")]),
    );
    for sig in ["TERM", "INT"] {
        let args = [
            "run".as_ref(),
            "--manifests".as_ref(),
            dir.path().as_os_str(),
            "--log-format".as_ref(),
            "json".as_ref(),
        ];
        let (mut child, http, _) = spawn_ready(&args, Stdio::null()).await;
        let client = client();
        let r = get(&client, http, "proc.test", "/").await;
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["name"], "proc");
        signal(&child.0, sig);
        let status = tokio::task::block_in_place(|| wait_exit(&mut child.0, Duration::from_secs(5)));
        assert!(status.success(), "SIG{sig}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_quickstart() {
    let (mut child, http, _) = spawn_ready(&["demo".as_ref()], Stdio::piped()).await;
    let client = client();
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let r = get(&client, http, "hello.localhost", "/").await;
        let v: serde_json::Value = r.json().await.unwrap();
        names.insert(v["name"].as_str().unwrap().to_string());
    }
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["hello-a", "hello-b"],
        "round-robin over two slices"
    );
    let r = get(&client, http, "api.localhost", "/v1/users").await;
    assert_eq!(r.status(), 200);
    let r = get(&client, http, "broken.localhost", "/").await;
    assert_eq!(r.status(), 503);
    let r = get(&client, http, "anything.example", "/x").await;
    assert_eq!(r.status(), 200, "catch-all");
    signal(&child.0, "INT");
    let status = tokio::task::block_in_place(|| wait_exit(&mut child.0, Duration::from_secs(5)));
    assert!(status.success());
    let mut out = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        out.contains(&format!("curl -s http://hello.localhost:{http}/")),
        "{out}"
    );
}
