//! The public Durable Streams conformance suite (npm `@durable-streams/server-conformance-tests`)
//! against this build's server, through `scripts/ds-conformance.sh`.
//!
//! It needs Node.js and npm (and the npm registry on the first run, cached under
//! `target/ds-conformance`). Set `TOPICS_SKIP_DS_CONFORMANCE=1` to skip it on a machine
//! without them; otherwise a missing npm fails the test rather than passing silently.

use std::process::Command;

#[test]
fn durable_streams_conformance_suite_passes() {
    if std::env::var_os("TOPICS_SKIP_DS_CONFORMANCE").is_some() {
        eprintln!("skipped: TOPICS_SKIP_DS_CONFORMANCE is set");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    // A port of its own: other black-box tests pick free ports from the kernel.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        l.local_addr().expect("local addr").port()
    };
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/ds-conformance.sh"))
        .env("DS_BIN", env!("CARGO_BIN_EXE_topics"))
        .env("DS_PORT", port.to_string())
        .env("DS_SUITE_DIR", format!("{root}/target/ds-conformance"))
        .output()
        .expect("run scripts/ds-conformance.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the conformance suite failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // The suite must actually have run: a count line with passes and no failures.
    assert!(
        stdout.contains("passed") && !stdout.contains("failed"),
        "no pass count in the suite's output:\n{stdout}\n{stderr}"
    );
}
