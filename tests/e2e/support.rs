//! Shared set-up for the end-to-end tier: the scheduler and workers of the release build run
//! against the real services and the reference model, driven through the client.

pub use fleet_tests_engine::{models_root, png_item, python, reference_dir, reference_engine};
pub use fleet_tests_services::unique;

/// Running fleet processes (scheduler and workers from the release build), killed when
/// dropped. `./fleet test` builds every binary before the tests run.
#[expect(
    clippy::disallowed_methods,
    reason = "the harness polls child processes from a test thread; no runtime shares it"
)]
pub mod fleet {
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use fleet_client::{amqp_url_as, Client, ClientConfig};
    use fleet_store::s3::S3Config;

    /// A binary of the release build that runs the tests.
    pub fn binary(name: &str) -> PathBuf {
        let exe = std::env::current_exe().expect("the test binary has a path");
        let dir = exe.parent().and_then(|deps| deps.parent()).expect("tests run from target/<profile>/deps");
        let path = dir.join(name);
        assert!(path.is_file(), "{} missing: ./fleet test builds every binary first", path.display());
        path
    }

    fn env(name: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} unset: the test command starts the stack and exports it"))
    }

    /// A client acting as `tenant` (dev password `<tenant>-dev`).
    pub async fn client(tenant: &str) -> Client {
        let config = ClientConfig {
            amqp_url: amqp_url_as(&env("FLEET_AMQP_URL"), tenant, &format!("{tenant}-dev")),
            tenant: tenant.to_string(),
            redis_url: env("FLEET_REDIS_URL"),
            s3: S3Config::from_env().expect("S3 settings exported"),
        };
        Client::connect(&config).await.expect("client connects")
    }

    /// Gives `command` the service's own credentials (`SCHEDULER`, `WORKER`, `API`): its
    /// broker user, Redis user and object-store key, as `deploy/stack.sh env` exports them.
    fn as_service(command: &mut Command, service: &str) {
        let var = |what: &str| std::env::var(format!("FLEET_{service}_{what}"));
        for (from, to) in [
            ("AMQP_URL", "FLEET_AMQP_URL"),
            ("REDIS_URL", "FLEET_REDIS_URL"),
            ("S3_KEY", "AWS_ACCESS_KEY_ID"),
            ("S3_SECRET", "AWS_SECRET_ACCESS_KEY"),
        ] {
            let value =
                var(from).unwrap_or_else(|_| panic!("FLEET_{service}_{from} unset: the test command exports it"));
            command.env(to, value);
        }
        // The royalty ledger, for the services that have a role in it (not the scheduler).
        match var("LEDGER_URL") {
            Ok(url) => command.env("FLEET_LEDGER_URL", url),
            Err(_) => command.env_remove("FLEET_LEDGER_URL"),
        };
    }

    /// The scheduler and workers of one test.
    pub struct Fleet {
        procs: Vec<(String, Child)>,
        /// The port of each process's `/metrics`, `/readyz` and `/livez`.
        ports: std::collections::HashMap<String, u16>,
        models: tempfile::TempDir,
        logs: tempfile::TempDir,
    }

    impl Default for Fleet {
        fn default() -> Self {
            Fleet {
                procs: Vec::new(),
                ports: Default::default(),
                models: tempfile::tempdir().expect("temp dir"),
                logs: tempfile::tempdir().expect("temp dir"),
            }
        }
    }

    impl Fleet {
        /// Starts a process with one more environment variable.
        pub fn spawn_with_env(&mut self, name: &str, binary_name: &str, args: &[&str], env: (&str, &str)) {
            let mut command = Command::new(binary(binary_name));
            match binary_name {
                "fleet-scheduler" => as_service(&mut command, "SCHEDULER"),
                "fleet-worker" => as_service(&mut command, "WORKER"),
                "fleet-api" => as_service(&mut command, "API"),
                _ => {}
            }
            command.args(args).env(env.0, env.1).env("FLEET_MODEL_DIR", self.models.path());
            self.spawn(name, command);
        }

        fn spawn(&mut self, name: &str, mut command: Command) {
            let log = std::fs::File::create(self.logs.path().join(format!("{name}.log"))).expect("log file");
            command.stdout(Stdio::null()).stderr(log);
            let child = command.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
            self.procs.push((name.to_string(), child));
        }

        /// Starts a scheduler and returns once it answers ready on `/readyz` (its broker
        /// session consumes intake, reports and tasks).
        pub fn scheduler(&mut self, name: &str) -> &mut Self {
            self.scheduler_with(name, &[])
        }

        /// Starts a scheduler like [`scheduler`](Self::scheduler) with more environment (a
        /// tenants file, a queue window).
        pub fn scheduler_with(&mut self, name: &str, env: &[(&str, &str)]) -> &mut Self {
            let mut command = Command::new(binary("fleet-scheduler"));
            as_service(&mut command, "SCHEDULER");
            command.env("FLEET_PROGRESS_INTERVAL_MS", "0");
            for (key, value) in env {
                command.env(key, value);
            }
            self.spawn_ready(name, command)
        }

        /// Starts an engine worker on the CPU with `slots` task slots and returns once it
        /// answers ready (connected and consuming its own queue).
        pub fn worker(&mut self, name: &str, slots: usize) -> &mut Self {
            self.worker_with(name, slots, &[], &[])
        }

        /// Starts a worker like [`worker`](Self::worker) with more arguments and environment
        /// (another executor, another object store endpoint), and returns once it is ready.
        pub fn worker_with(&mut self, name: &str, slots: usize, args: &[&str], env: &[(&str, &str)]) -> &mut Self {
            let mut command = Command::new(binary("fleet-worker"));
            as_service(&mut command, "WORKER");
            command
                .args(["serve", "--device", "cpu", "--id", name, "--slots", &slots.to_string()])
                .args(args)
                .env("FLEET_MODEL_DIR", self.models.path());
            for (key, value) in env {
                command.env(key, value);
            }
            self.spawn_ready(name, command)
        }

        /// Starts the HTTP API as its own broker user and returns its base URL once it answers
        /// ready (Redis and the broker reachable). `env` adds settings (webhook backoff, ...).
        pub fn api(&mut self, name: &str, env: &[(&str, &str)]) -> String {
            let port = free_port();
            let mut command = Command::new(binary("fleet-api"));
            as_service(&mut command, "API");
            command.args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
            for (key, value) in env {
                command.env(key, value);
            }
            self.spawn(name, command);
            self.await_ready(name, port);
            format!("http://127.0.0.1:{port}")
        }

        /// Makes an API token with the operator's command: for `tenant`, or an operator's.
        pub fn token(tenant: Option<&str>, name: &str) -> String {
            let mut command = Command::new(binary("fleet-api"));
            command.args(["token", "create", "--name", name]);
            match tenant {
                Some(t) => command.args(["--tenant", t]),
                None => command.arg("--operator"),
            };
            let out = command.output().expect("fleet-api token create runs");
            assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).expect("the token is text").trim().to_string()
        }

        /// Revokes a token with the operator's command.
        pub fn revoke(token: &str) {
            let id = token.strip_prefix("fleet_").and_then(|t| t.get(..16)).expect("a fleet token");
            let out = Command::new(binary("fleet-api")).args(["token", "revoke", id]).output().expect("revoke runs");
            assert!(out.status.success(), "token revoke: {}", String::from_utf8_lossy(&out.stderr));
        }

        /// The process id of `name`.
        pub fn pid(&self, name: &str) -> u32 {
            self.procs.iter().find(|(n, _)| n == name).expect("a started process").1.id()
        }

        /// Whether the process `name` is still running.
        pub fn alive(&mut self, name: &str) -> bool {
            let (_, child) = self.procs.iter_mut().find(|(n, _)| n == name).expect("a started process");
            child.try_wait().expect("wait").is_none()
        }

        /// Spawns with a metrics endpoint on a free port and waits for its `/readyz`.
        fn spawn_ready(&mut self, name: &str, mut command: Command) -> &mut Self {
            let port = free_port();
            command.env("FLEET_METRICS_ADDR", format!("127.0.0.1:{port}"));
            self.ports.insert(name.to_string(), port);
            self.spawn(name, command);
            self.await_ready(name, port);
            self
        }

        /// The process's `GET /metrics` text, or `None` if it does not answer.
        pub fn metrics(&self, name: &str) -> Option<String> {
            use std::io::{Read, Write};
            let port = self.ports[name];
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n").ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).ok()?;
            let (head, body) = response.split_once("\r\n\r\n")?;
            head.starts_with("HTTP/1.1 200").then(|| body.to_string())
        }

        /// Starts a scheduler without waiting for it to be ready (a standby, while another
        /// leads, never is); returns the port of its `/readyz`.
        pub fn scheduler_unready(&mut self, name: &str) -> u16 {
            let mut command = Command::new(binary("fleet-scheduler"));
            as_service(&mut command, "SCHEDULER");
            command.env("FLEET_PROGRESS_INTERVAL_MS", "0");
            let port = free_port();
            command.env("FLEET_METRICS_ADDR", format!("127.0.0.1:{port}"));
            self.ports.insert(name.to_string(), port);
            self.spawn(name, command);
            port
        }

        /// Waits until the process `name` answers 200 on `/readyz` at `port`.
        pub fn await_ready(&mut self, name: &str, port: u16) {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !ready(port) {
                let (_, child) = self.procs.iter_mut().find(|(n, _)| n == name).expect("a started process");
                if let Some(status) = child.try_wait().expect("wait") {
                    panic!("{name} exited ({status}) before it was ready:\n{}", self.log(name));
                }
                assert!(std::time::Instant::now() < deadline, "{name} not ready after 120 s:\n{}", self.log(name));
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        /// Kills a process with SIGKILL: no drain, no goodbye.
        pub fn kill9(&mut self, name: &str) {
            let (_, child) = self.procs.iter_mut().find(|(n, _)| n == name).expect("a started process");
            child.kill().expect("kill -9");
            child.wait().expect("reaped");
        }

        /// Sends a signal (`STOP`, `CONT`, ...) to a process.
        pub fn signal(&mut self, name: &str, signal: &str) {
            let (_, child) = self.procs.iter_mut().find(|(n, _)| n == name).expect("a started process");
            let pid = child.id().to_string();
            let status = Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("kill");
            assert!(status.success(), "kill -{signal} {name}");
        }

        /// Sends SIGTERM and waits up to `timeout` for the process to exit; its exit success.
        pub fn terminate(&mut self, name: &str, timeout: Duration) -> bool {
            let (_, child) = self.procs.iter_mut().find(|(n, _)| n == name).expect("a started process");
            let pid = child.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
            let deadline = std::time::Instant::now() + timeout;
            while std::time::Instant::now() < deadline {
                if let Some(status) = child.try_wait().expect("wait") {
                    return status.success();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        }

        /// Copies every process's log into `dir` (kept when a run needs looking into).
        pub fn keep_logs(&self, dir: &std::path::Path) {
            std::fs::create_dir_all(dir).expect("log folder");
            for (name, _) in &self.procs {
                let _ = std::fs::copy(self.logs.path().join(format!("{name}.log")), dir.join(format!("{name}.log")));
            }
        }

        /// The log of a process so far (for failure messages).
        pub fn log(&self, name: &str) -> String {
            std::fs::read_to_string(self.logs.path().join(format!("{name}.log"))).unwrap_or_default()
        }
    }

    /// A TCP port on loopback that nothing holds at the moment of asking.
    pub fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        listener.local_addr().expect("bound address").port()
    }

    /// Whether `GET /readyz` on 127.0.0.1:`port` answers 200.
    pub fn ready(port: u16) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream.write_all(b"GET /readyz HTTP/1.1\r\nhost: localhost\r\n\r\n").is_err() {
            return false;
        }
        let mut head = [0u8; 16];
        let n = stream.read(&mut head).unwrap_or(0);
        head[..n].starts_with(b"HTTP/1.1 200")
    }

    impl Drop for Fleet {
        /// Asks every process to stop (a scheduler gives up its lead, so the next test's
        /// scheduler leads at once), and kills what is still running after 5 s.
        fn drop(&mut self) {
            for (_, child) in &mut self.procs {
                if let Ok(None) = child.try_wait() {
                    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
                }
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline
                && self.procs.iter_mut().any(|(_, child)| matches!(child.try_wait(), Ok(None)))
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            for (_, child) in &mut self.procs {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A small PNG photo: a gradient with a dark square in the middle.
pub fn photo(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(96, 72, |x, y| {
        if (30..66).contains(&x) && (20..52).contains(&y) {
            image::Rgb([20, 30 + seed, 40])
        } else {
            image::Rgb([(x * 2) as u8, (y * 3) as u8, 200u8.wrapping_add(seed)])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A log without its terminal colours, so `field=value` reads as written.
pub fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// libfaketime's preload library (Debian's `faketime` package, which the stack installs).
pub fn libfaketime() -> String {
    let found = std::fs::read_dir("/usr/lib").expect("/usr/lib").filter_map(Result::ok).find_map(|arch| {
        let lib = arch.path().join("faketime/libfaketime.so.1");
        lib.is_file().then(|| lib.display().to_string())
    });
    found.expect("libfaketime.so.1 under /usr/lib/<arch>/faketime: deploy/stack.sh up installs it")
}
