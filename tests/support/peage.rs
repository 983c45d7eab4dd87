//! A `peage up --demo` process for end-to-end tests, started as a user would and stopped with
//! a signal; shared by the embedded and dashboard tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Peage {
    pub child: Child,
    pub demo: Value,
}

impl Peage {
    /// Starts `peage up --demo` on ports chosen by the OS and waits for its fresh demo.json.
    pub fn start(data_dir: &Path) -> Peage {
        Peage::start_with(data_dir, &[])
    }

    /// The same, with extra `PEAGE_*` settings in the environment.
    pub fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> Peage {
        Peage::start_logging(data_dir, env, None)
    }

    /// The same, its log (JSON lines) written to `log` instead of the test's output.
    pub fn start_logging(data_dir: &Path, env: &[(&str, &str)], log: Option<&Path>) -> Peage {
        let mut args: Vec<std::ffi::OsString> = [
            "--gateway-listen",
            "127.0.0.1:0",
            "--control-listen",
            "127.0.0.1:0",
            "--data-dir",
        ]
        .map(Into::into)
        .to_vec();
        args.push(data_dir.into());
        Peage::start_up(data_dir, &args, env, log)
    }

    /// `peage up --demo ARGS…` whose data directory is `data_dir` (where it writes demo.json).
    pub fn start_up(
        data_dir: &Path,
        args: &[std::ffi::OsString],
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Peage {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("the log file")),
            None => Stdio::inherit(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_peage"))
            // Finance finalizes in these tests; one that wants the scheduler turns it on.
            .env("PEAGE_BILLING__AUTO_FINALIZE", "false")
            .env("PEAGE_BILLING__ALERTS_EVERY_S", "1")
            .envs(env.iter().copied())
            .args(["up", "--demo"])
            .args(args)
            .env("PEAGE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("peage starts");
        // Owned at once, so a failed start still kills and reaps the process (Drop).
        let mut p = Peage {
            child,
            demo: Value::Null,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let path = data_dir.join("demo.json");
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Ok(demo) = serde_json::from_str::<Value>(&text) {
                    if demo["pid"].as_u64() == Some(p.child.id() as u64) {
                        p.demo = demo;
                        return p;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "peage did not write {} in time",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn s(&self, field: &str) -> String {
        self.demo[field]
            .as_str()
            .unwrap_or_else(|| panic!("demo.json lacks {field}"))
            .to_string()
    }

    /// Ctrl-C, as a person would press it; the process must exit cleanly.
    pub fn interrupt(self) {
        self.stop_with("-INT")
    }

    /// Sends `signal` and waits for a clean exit.
    pub fn stop_with(mut self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                assert!(exit.success(), "peage exited with {exit}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "peage did not stop within 30 s of {signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Peage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
