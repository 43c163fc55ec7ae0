//! The built `infermux` binary, run as a user would.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn infermux() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infermux"));
    // A clean environment for the flags under test, in an empty directory so
    // that no ./infermux.yml is picked up.
    for var in [
        "INFERMUX_CONFIG",
        "INFERMUX_ADDR",
        "INFERMUX_TOKENTRACE",
        "INFERMUX_LOG_LEVEL",
        "INFERMUX_LOG_FORMAT",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir(std::env::temp_dir());
    cmd
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = infermux().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn infer_prints_the_echo_reply() {
    let (code, stdout, stderr) = run(&["infer", "--model", "echo-v1", "--prompt", "Hello world"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "echo: Hello world\n");
}

#[test]
fn infer_json_prints_the_whole_response() {
    let (code, stdout, _) = run(&["infer", "--model", "echo-v1", "--prompt", "Hello", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["content"], "echo: Hello");
    assert_eq!(v["provider"], "echo");
    assert_eq!(v["model"], "echo-v1");
    assert_eq!(v["tokens_in"], 1);
    assert_eq!(v["tokens_out"], 2);
    assert_eq!(v["cost_usd"], 0.00003);
    assert_eq!(v["finish_reason"], "stop");
}

#[test]
fn errors_are_one_line_on_stderr_with_a_nonzero_exit() {
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["infer", "--model", "gpt-9", "--prompt", "x"],
            1,
            "model_not_found",
        ),
        (
            &[
                "infer",
                "--model",
                "echo-v1",
                "--prompt",
                "x",
                "--provider",
                "nope",
            ],
            1,
            "\"nope\"",
        ),
        (
            &[
                "infer",
                "--model",
                "echo-v1",
                "--prompt",
                "x",
                "--config",
                "/no/such.yml",
            ],
            1,
            "/no/such.yml",
        ),
        (&["serve", "--addr", "8600"], 1, "--addr \"8600\""),
        (&["serve", "--grace-period", "soon"], 2, "soon"),
        (&["infer", "--model", "echo-v1"], 2, "--prompt"),
        (&["frobnicate"], 2, "frobnicate"),
        (
            &[
                "infer",
                "--model",
                "echo-v1",
                "--prompt",
                "x",
                "--log-level",
                "[[[",
            ],
            2,
            "--log-level",
        ),
    ];
    for (args, want_code, want_text) in cases {
        let (code, stdout, stderr) = run(args);
        assert_eq!(code, *want_code, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(stderr.contains(want_text), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
            "{stderr}"
        );
    }
}

#[test]
fn version_and_help() {
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("infermux "));
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for word in ["serve", "infer"] {
        assert!(stdout.contains(word), "{stdout}");
    }
}

/// A running `infermux serve`, stopped with SIGTERM when dropped.
struct Served {
    child: Child,
    addr: String,
    /// The server's log lines (JSON), as they arrive.
    logs: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Served {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Served {
        Served::start_command("serve", args, env)
    }

    fn start_command(command: &str, args: &[&str], env: &[(&str, &str)]) -> Served {
        let mut child = infermux()
            .arg(command)
            .args(args)
            .args(["--log-format", "json"])
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut before = Vec::new();
        let addr = loop {
            assert!(
                Instant::now() < deadline,
                "the server did not say where it listens"
            );
            let line = lines.next().expect("server exited early").unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if let Some(addr) = v["addr"].as_str() {
                break addr.to_owned();
            }
            before.push(v);
        };
        // Keep reading stderr so the server never blocks on a full pipe.
        let logs = std::sync::Arc::new(std::sync::Mutex::new(before));
        let kept = logs.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    kept.lock().unwrap().push(v);
                }
            }
        });
        Served { child, addr, logs }
    }

    fn terminate(&mut self) -> i32 {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn post_infer(addr: &str) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}/infer"))
            .json(&serde_json::json!({"model": "echo-v1", "messages": [{"role": "user", "content": "Hello"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    })
}

#[test]
fn serve_answers_and_exits_cleanly_on_sigterm() {
    let mut served = Served::start(&["--addr", "127.0.0.1:0"], &[]);
    assert_eq!(post_infer(&served.addr)["content"], "echo: Hello");
    assert_eq!(served.terminate(), 0);
}

#[test]
fn serve_takes_its_address_from_the_environment() {
    let mut served = Served::start(&[], &[("INFERMUX_ADDR", "127.0.0.1:0")]);
    assert!(served.addr.starts_with("127.0.0.1:"), "{}", served.addr);
    assert_eq!(post_infer(&served.addr)["provider"], "echo");
    assert_eq!(served.terminate(), 0);
}

/// The README's `curl` examples, run against a real server, so they cannot rot.
#[test]
fn readme_curl_examples_work() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut current = String::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        if current.is_empty() && !line.starts_with("curl ") {
            continue;
        }
        current.push_str(line.trim_end_matches('\\'));
        current.push(' ');
        if !line.ends_with('\\') {
            commands.push(std::mem::take(&mut current));
        }
    }
    assert!(commands.len() >= 5, "found {commands:?}");
    let mut served = Served::start(&["--addr", "127.0.0.1:0"], &[]);
    for cmd in &commands {
        let cmd = cmd.replace("localhost:8600", &served.addr);
        let out = Command::new("sh").args(["-c", &cmd]).output().unwrap();
        assert!(out.status.success(), "{cmd}");
        let body = String::from_utf8(out.stdout).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{cmd}: {body}"));
        assert!(v.get("error").is_none(), "{cmd}: {body}");
    }
    assert_eq!(served.terminate(), 0);
}

/// A Python virtualenv with the official gRPC packages, made once per target dir.
fn interop_python() -> std::path::PathBuf {
    // Tests run in parallel threads; one of them makes the venv.
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MAKING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let venv = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-venv");
    let python = venv.join("bin/python");
    let complete = python.exists()
        && Command::new(&python)
            .args([
                "-c",
                "import grpc, grpc_reflection, grpc_health, openai, anthropic",
            ])
            .status()
            .is_ok_and(|s| s.success());
    if !complete {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 is needed for the interop test");
        assert!(status.success(), "python3 -m venv failed");
        let requirements = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/interop/requirements.txt"
        );
        let status = Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
                requirements,
            ])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "pip install of the interop requirements failed"
        );
    }
    python
}

/// The official gRPC Python client explores `serve-grpc` by reflection alone
/// (as grpcurl does) and calls every method, the error codes and health.
#[test]
fn python_grpc_client_works_through_reflection() {
    let mut served = Served::start_command("serve-grpc", &["--addr", "127.0.0.1:0"], &[]);
    run_interop("grpc_reflection_client.py", &served.addr);
    assert_eq!(served.terminate(), 0);
}

#[test]
fn serve_grpc_answers_the_rust_client_and_drains_on_sigterm() {
    let mut served = Served::start_command("serve-grpc", &["--addr", "127.0.0.1:0"], &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt.block_on(async {
        let client = infermux_client::Client::connect(format!("http://{}", served.addr))
            .await
            .unwrap();
        client.prompt("echo-v1", "Hello world").await.unwrap()
    });
    // Close the client's connection: an HTTP/2 peer that never answers the
    // server's GOAWAY ping would hold the drain until --grace-period.
    drop(rt);
    assert_eq!(res.content, "echo: Hello world");
    assert_eq!(res.provider, "echo");
    assert_eq!(served.terminate(), 0);
    // One structured line per RPC: method, code, latency, provider.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && !served
            .logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l["message"] == "stopped")
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let logs = served.logs.lock().unwrap().clone();
    let rpcs: Vec<&serde_json::Value> = logs
        .iter()
        .filter(|l| l["target"] == "infermux::rpc")
        .collect();
    assert_eq!(rpcs.len(), 1, "{logs:?}");
    assert_eq!(rpcs[0]["method"], "/infermux.v1.InferMuxService/Infer");
    assert_eq!(rpcs[0]["code"], "OK");
    assert_eq!(rpcs[0]["provider"], "echo");
    assert!(rpcs[0]["latency_ms"].as_f64().unwrap() >= 0.0);
}

/// The official OpenAI Python SDK against `serve`, changing only its base URL:
/// completion, stream with usage, models, embeddings, errors.
#[test]
fn openai_python_sdk_works_against_serve() {
    let mut served = Served::start(&["--addr", "127.0.0.1:0"], &[]);
    run_interop("openai_sdk_client.py", &format!("http://{}", served.addr));
    assert_eq!(served.terminate(), 0);
}

/// The official OpenAI SDK through `serve` to OpenAI-, Anthropic-, Azure- and
/// Ollama-shaped upstreams (the script runs the fake upstreams and the binary).
#[test]
fn openai_python_sdk_works_through_every_provider_shape() {
    run_interop("openai_sdk_providers.py", env!("CARGO_BIN_EXE_infermux"));
}

/// The official Anthropic SDK through `serve`'s `/v1/messages` to an
/// Anthropic-shaped upstream (passed through) and an OpenAI-shaped one
/// (translated), with a key as Claude Code sends it.
#[test]
fn anthropic_python_sdk_works_through_both_provider_shapes() {
    run_interop("anthropic_sdk.py", env!("CARGO_BIN_EXE_infermux"));
}

/// Runs one of `tests/interop/*.py` against `target`; it must pass every check.
fn run_interop(script: &str, target: &str) {
    run_interop_with(script, &[target]);
}

fn run_interop_with(script: &str, args: &[&str]) {
    let python = interop_python();
    let script = format!(
        "{}/../../tests/interop/{script}",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("interop: 0 failed"), "{stdout}");
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let mut served = Served::start(&["--addr", "127.0.0.1:0"], &[]);
    let (code, _, stderr) = run(&["serve", "--addr", &served.addr]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("cannot listen on") && stderr.contains(&served.addr),
        "{stderr}"
    );
    assert_eq!(served.terminate(), 0);
}

#[test]
fn validate_exit_codes() {
    let dir = std::env::temp_dir().join(format!("infermux-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let good = write("good.yml", "providers:\n  - name: e\n    type: echo\n");
    let extra = write(
        "extra.yml",
        "providers:\n  - name: e\n    type: echo\n    colour: blue\n",
    );
    let malformed = write("bad.yml", "providers: [\n");
    let invalid = write(
        "invalid.yml",
        "providers:\n  - name: a\n    type: opnai\n  - name: k\n    type: openai\n    api_key: ${INFERMUX_TEST_UNSET_KEY}\n",
    );
    let cases: &[(&[&str], i32, &str)] = &[
        (&["validate", "--config", &good], 0, ""),
        (
            &["validate", "--config", &extra],
            0,
            "providers[0].colour: unknown field",
        ),
        (
            &["validate", "--config", &extra, "--strict"],
            3,
            "providers[0].colour: unknown field",
        ),
        (
            &["validate", "--config", "/no/such/infermux.yml"],
            1,
            "/no/such/infermux.yml",
        ),
        (&["validate", "--config", &malformed], 2, "malformed YAML"),
        (
            &["validate", "--config", &invalid],
            3,
            "providers[0].type: unknown provider type \"opnai\"",
        ),
        (
            &["validate", "--config", &invalid],
            3,
            "providers[1].api_key: environment variable INFERMUX_TEST_UNSET_KEY is not set",
        ),
    ];
    for (args, want_code, want_text) in cases {
        let (code, stdout, stderr) = run(args);
        assert_eq!(code, *want_code, "{args:?}: {stderr}");
        assert!(stderr.contains(want_text), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"));
        if *want_code == 0 {
            assert!(stdout.contains("valid (1 providers: e)"), "{stdout}");
        }
    }
    // The same file drives `infer`.
    let (code, stdout, _) = run(&[
        "infer",
        "--config",
        &good,
        "--model",
        "echo-v1",
        "--prompt",
        "from config",
    ]);
    assert_eq!((code, stdout.as_str()), (0, "echo: from config\n"));
    let (code, _, stderr) = run(&[
        "infer", "--config", &invalid, "--model", "x", "--prompt", "x",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("opnai"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn status_and_providers_against_a_running_server() {
    let mut served = Served::start(&["--addr", "127.0.0.1:0"], &[]);
    let server = format!("http://{}", served.addr);
    let (code, stdout, stderr) = run(&["status", "--server", &server]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("status: ok") && stdout.contains("echo") && stdout.contains("closed"),
        "{stdout}"
    );
    let (code, stdout, _) = run(&["providers", "--server", &server, "--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["providers"][0]["name"], "echo");
    assert_eq!(v["providers"][0]["circuit"], "closed");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(format!("{server}/_infermux/providers/echo/circuit/open"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    });
    drop(rt);
    let (code, stdout, _) = run(&["status", "--server", &server]);
    assert_eq!(code, 1, "an open circuit: {stdout}");
    assert!(stdout.contains("open"), "{stdout}");
    assert_eq!(served.terminate(), 0);

    let (code, _, stderr) = run(&["status", "--server", &server]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
}

#[test]
fn management_endpoints_can_have_their_own_address() {
    let dir = std::env::temp_dir().join(format!("infermux-mgmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("infermux.yml");
    std::fs::write(
        &config,
        "management_listen: \"127.0.0.1:0\"\nproviders:\n  - name: echo\n    type: echo\n",
    )
    .unwrap();
    let mut served = Served::start(
        &[
            "--addr",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let management = loop {
        let found = served
            .logs
            .lock()
            .unwrap()
            .iter()
            .find(|l| l["message"] == "management endpoints listening")
            .cloned();
        if let Some(line) = found {
            break line["addr"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no management listener logged");
        std::thread::sleep(Duration::from_millis(20));
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let status = |url: String| {
            let client = client.clone();
            async move { client.get(url).send().await.unwrap().status().as_u16() }
        };
        assert_eq!(
            status(format!("http://{management}/_infermux/status")).await,
            200
        );
        assert_eq!(
            status(format!("http://{management}/_infermux/metrics")).await,
            200
        );
        assert_eq!(
            status(format!("http://{}/_infermux/status", served.addr)).await,
            404,
            "not on the API address"
        );
        assert_eq!(
            status(format!("http://{}/_infermux/health", served.addr)).await,
            200
        );
        assert_eq!(
            status(format!("http://{management}/infer")).await,
            404,
            "no API on the management address"
        );
    });
    drop(rt);
    assert_eq!(post_infer(&served.addr)["content"], "echo: Hello");
    assert_eq!(served.terminate(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Waits until a log line satisfies `want`, or fails after 5 s.
fn wait_for_log(served: &Served, what: &str, want: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !served.logs.lock().unwrap().iter().any(&want) {
        assert!(Instant::now() < deadline, "no log line {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn says_open(line: &serde_json::Value) -> bool {
    line["level"] == "WARN"
        && line["message"]
            .as_str()
            .is_some_and(|m| m.contains("open to anyone"))
}

#[test]
fn an_exposed_server_with_paid_providers_and_no_caller_auth_warns_at_start() {
    let dir = std::env::temp_dir().join(format!("infermux-exposed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("paid.yml");
    std::fs::write(
        &config,
        "providers:\n  - name: openai\n    type: openai\n    api_key: sk-test-key-123456\n    base_url: http://127.0.0.1:9/v1\n    models: [gpt-4o]\n    health_check: {disabled: true}\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let mut exposed = Served::start(&["--addr", "0.0.0.0:0", "--config", config], &[]);
    wait_for_log(&exposed, "warning that the routes are open", says_open);
    assert_eq!(exposed.terminate(), 0);
    // On loopback, or with echo alone, there is nothing to warn about.
    for args in [
        vec!["--addr", "127.0.0.1:0", "--config", config],
        vec!["--addr", "0.0.0.0:0"],
    ] {
        let mut quiet = Served::start(&args, &[]);
        post_infer_anywhere(&quiet.addr);
        assert_eq!(quiet.terminate(), 0);
        let logs = quiet.logs.lock().unwrap().clone();
        assert!(!logs.iter().any(says_open), "{args:?}: {logs:?}");
    }
}

/// `post_infer` for a server listening on all interfaces (reached on loopback).
fn post_infer_anywhere(addr: &str) {
    let port = addr.rsplit(':').next().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Any answer: the server is up and past its start-up lines.
        reqwest::get(format!("http://127.0.0.1:{port}/_infermux/health"))
            .await
            .unwrap();
    });
}

#[test]
fn serve_keeps_serving_through_its_drain_delay_with_health_draining() {
    let mut served = Served::start(&["--addr", "127.0.0.1:0", "--drain-delay", "2s"], &[]);
    let health = |addr: &str| -> u16 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            reqwest::get(format!("http://{addr}/_infermux/health"))
                .await
                .map_or(0, |r| r.status().as_u16())
        })
    };
    assert_eq!(health(&served.addr), 200);
    Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while health(&served.addr) != 503 {
        assert!(Instant::now() < deadline, "health never said draining");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Still routing during the delay.
    assert_eq!(post_infer(&served.addr)["content"], "echo: Hello");
    assert_eq!(served.terminate(), 0);
}

/// A certificate authority and a server certificate for `localhost` and
/// 127.0.0.1 it signed, written as PEM files into `dir`: (ca, cert, key).
fn tls_files(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Distinct names: a leaf named like its issuer looks self-signed.
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "infermux test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[test]
fn both_servers_speak_tls_to_real_tls_clients() {
    let dir = std::env::temp_dir().join(format!("infermux-tls-{}", std::process::id()));
    let (ca, cert, key) = tls_files(&dir);
    let config = dir.join("tls.yml");
    std::fs::write(
        &config,
        format!(
            "providers:\n  - name: echo\n    type: echo\n    models: [echo-v1]\ntls: {{cert: \"{}\", key: \"{}\"}}\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    // HTTPS: reqwest (rustls) trusting only our authority.
    let mut served = Served::start(&["--addr", "127.0.0.1:0", "--config", config], &[]);
    let port = served.addr.rsplit(':').next().unwrap().to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .unwrap();
        let resp = client
            .post(format!("https://localhost:{port}/infer"))
            .json(&serde_json::json!({"model": "echo-v1", "messages": [{"role": "user", "content": "Hello"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["content"], "echo: Hello");
        // Plain HTTP to the TLS port gets no HTTP answer.
        let plain = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/_infermux/health"))
            .send()
            .await;
        assert!(plain.is_err(), "{plain:?}");
    });
    drop(rt);
    assert_eq!(served.terminate(), 0);

    // gRPC over TLS: the official Python client, reflection, every method, health.
    let mut served = Served::start_command(
        "serve-grpc",
        &["--addr", "127.0.0.1:0", "--config", config],
        &[],
    );
    let port = served.addr.rsplit(':').next().unwrap().to_owned();
    run_interop_with(
        "grpc_reflection_client.py",
        &[&format!("localhost:{port}"), ca.to_str().unwrap()],
    );
    assert_eq!(served.terminate(), 0);

    // A key file that is missing is a one-line error naming it.
    std::fs::remove_file(&key).unwrap();
    let (code, _, err) = run(&["serve", "--addr", "127.0.0.1:0", "--config", config]);
    assert_ne!(code, 0);
    assert!(err.contains("tls.key") && err.contains("key.pem"), "{err}");
}

/// `POST /infer` with a key: the status and the `X-Infermux-Cost` shown.
fn infer_with_key(addr: &str, key: &str) -> (u16, f64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}/infer"))
            .bearer_auth(key)
            .json(&serde_json::json!({"model": "echo-v1", "messages": [{"role": "user", "content": "Hello there"}]}))
            .send()
            .await
            .unwrap();
        let cost = resp
            .headers()
            .get("x-infermux-cost")
            .map_or(0.0, |v| v.to_str().unwrap().parse().unwrap());
        (resp.status().as_u16(), cost)
    })
}

/// A config with one key in a fresh folder; the ledger goes beside it.
fn callers_config(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("infermux-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("infermux.yml");
    std::fs::write(
        &config,
        "providers:\n  - name: echo\n    type: echo\nauth:\n  required: true\n  keys:\n    - name: app\n      key: sk-app\n",
    )
    .unwrap();
    config
}

#[test]
fn keys_and_spend_through_the_cli_and_the_ledger_survives_sigterm() {
    let config = callers_config("keys");
    let config_arg = config.to_str().unwrap();
    let mut served = Served::start(&["--addr", "127.0.0.1:0", "--config", config_arg], &[]);
    let server = format!("http://{}", served.addr);
    assert_eq!(infer_with_key(&served.addr, "sk-wrong").0, 401);

    let (code, stdout, stderr) = run(&[
        "keys",
        "create",
        "ci",
        "--models",
        "echo-*",
        "--budget-usd",
        "1",
        "--budget-period",
        "monthly",
        "--server",
        &server,
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let made: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let secret = made["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("imx-"));
    let mut shown = 0.0;
    for key in ["sk-app", secret.as_str()] {
        for _ in 0..5 {
            let (status, cost) = infer_with_key(&served.addr, key);
            assert_eq!(status, 200);
            shown += cost;
        }
    }
    assert!(shown > 0.0, "echo has a price");
    let (code, stdout, _) = run(&["keys", "list", "--server", &server]);
    assert_eq!(code, 0);
    assert!(stdout.contains("app") && stdout.contains("ci"), "{stdout}");
    assert!(!stdout.contains(&secret), "{stdout}");
    let (code, stdout, _) = run(&[
        "keys", "show", "ci", "--server", &server, "--format", "json",
    ]);
    assert_eq!(code, 0);
    let ci: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(ci["spend_usd"].as_f64().unwrap() > 0.0, "{ci}");
    assert_eq!(served.terminate(), 0);
    assert!(config.with_file_name("infermux.db").exists());
    // The secret the server made is nowhere in the ledger's files.
    for file in ["infermux.db", "infermux.db-wal"] {
        if let Ok(bytes) = std::fs::read(config.with_file_name(file)) {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the secret is in {file}"
            );
        }
    }

    // After a restart, the report counts every call the first run answered.
    let mut served = Served::start(&["--addr", "127.0.0.1:0", "--config", config_arg], &[]);
    let server = format!("http://{}", served.addr);
    let (code, stdout, stderr) = run(&[
        "spend",
        "--group-by",
        "key",
        "--format",
        "csv",
        "--server",
        &server,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "group,requests,tokens_in,tokens_out,cost_usd");
    let rows: Vec<Vec<&str>> = lines[1..].iter().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows.iter().map(|r| (r[0], r[1])).collect::<Vec<_>>(),
        [("app", "5"), ("ci", "5")]
    );
    let total: f64 = rows.iter().map(|r| r[4].parse::<f64>().unwrap()).sum();
    assert!((total - shown).abs() < 1e-12, "{total} vs {shown}");
    let (code, stdout, _) = run(&["spend", "--group-by", "day", "--server", &server]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("DAY"), "{stdout}");

    // Revoked: refused at once, and after the next restart too.
    let (code, _, stderr) = run(&["keys", "revoke", "ci", "--server", &server]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(infer_with_key(&served.addr, &secret).0, 401);
    let (code, _, stderr) = run(&["keys", "show", "nobody", "--server", &server]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no key is named"), "{stderr}");
    assert_eq!(served.terminate(), 0);
    let mut served = Served::start(&["--addr", "127.0.0.1:0", "--config", config_arg], &[]);
    assert_eq!(infer_with_key(&served.addr, &secret).0, 401);
    assert_eq!(infer_with_key(&served.addr, "sk-app").0, 200);
    assert_eq!(served.terminate(), 0);
}

#[test]
fn after_sigkill_at_most_the_last_second_of_ledger_rows_is_lost() {
    let config = callers_config("kill");
    let config_arg = config.to_str().unwrap();
    let served = Served::start(&["--addr", "127.0.0.1:0", "--config", config_arg], &[]);
    for _ in 0..20 {
        assert_eq!(infer_with_key(&served.addr, "sk-app").0, 200);
    }
    std::thread::sleep(Duration::from_millis(1200));
    // Dropping `Served` kills the process (SIGKILL): no flush on the way out.
    drop(served);
    let mut served = Served::start(&["--addr", "127.0.0.1:0", "--config", config_arg], &[]);
    let server = format!("http://{}", served.addr);
    let (code, stdout, stderr) = run(&["spend", "--format", "json", "--server", &server]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["rows"][0]["group"], "app", "{report}");
    assert_eq!(report["rows"][0]["requests"], 20, "{report}");
    assert_eq!(served.terminate(), 0);
}

#[test]
fn a_ledger_that_cannot_be_used_stops_the_start_with_its_name() {
    let config = callers_config("bad-ledger");
    let db = config.with_file_name("infermux.db");
    // A file that is not a database: refused, named, and left as it was.
    std::fs::write(
        &db,
        b"this is not sqlite, and it is not empty either...".repeat(100),
    )
    .unwrap();
    let (code, _, stderr) = run(&[
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("infermux.db"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        std::fs::read(&db)
            .unwrap()
            .starts_with(b"this is not sqlite"),
        "never reset"
    );
    // A folder where the file cannot be made.
    std::fs::write(
        &config,
        "providers:\n  - name: echo\n    type: echo\nledger:\n  path: /proc/infermux/ledger.db\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&[
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("/proc/infermux/ledger.db"), "{stderr}");
}

#[test]
fn a_key_pattern_that_matches_no_model_warns_at_start() {
    let config = callers_config("glob");
    std::fs::write(
        &config,
        "providers:\n  - name: echo\n    type: echo\nauth:\n  keys:\n    - name: app\n      key: sk-app\n      models: [\"gtp-4o*\", echo-v1]\n",
    )
    .unwrap();
    let mut served = Served::start(
        &[
            "--addr",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    wait_for_log(&served, "about the unmatched pattern", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("auth.keys[0].models[0]") && m.contains("gtp-4o*"))
    });
    assert!(
        !served
            .logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.to_string().contains("sk-app")),
        "the secret is in no log line"
    );
    assert_eq!(served.terminate(), 0);
}

/// The official OpenAI Python SDK with infermux keys: each refusal is the
/// SDK's own exception class.
#[test]
fn openai_python_sdk_works_with_keys() {
    let config = callers_config("sdk-keys");
    std::fs::write(
        &config,
        "providers:\n  - name: echo\n    type: echo\nauth:\n  required: true\n  keys:\n    - name: app\n      key: sk-app\n      models: [\"echo-*\"]\n      budget: {usd: 10, period: monthly}\n    - name: mini\n      key: sk-mini\n      models: [other-model]\n    - name: slow\n      key: sk-slow\n      rate_limits: {requests_per_minute: 1}\n",
    )
    .unwrap();
    let mut served = Served::start(
        &[
            "--addr",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    run_interop("openai_sdk_keys.py", &format!("http://{}", served.addr));
    assert_eq!(served.terminate(), 0);
}
