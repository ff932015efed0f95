//! Real `redis-server` processes on loopback ports for the tests: one
//! server, or a Redis Cluster of several. Each has its own temporary
//! directory and no persistence; it is killed on drop. Readiness is a real
//! `PING` answered with `+PONG`, not a sleep.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::PATIENCE;

/// A port that was free a moment ago (the listener is dropped before the
/// caller binds it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Sends one command in RESP and returns the raw reply (what one read
/// gives; enough for the short replies the helpers ask for).
pub fn redis_command(port: u16, args: &[&str]) -> std::io::Result<String> {
    read_reply(send_command(port, args)?)
}

/// Sends one command without waiting for its reply (read it later with
/// [`read_reply`]): for commands that block the server, like `DEBUG SLEEP`.
pub fn send_command(port: u16, args: &[&str]) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(req.as_bytes())?;
    Ok(stream)
}

/// The reply to a command sent with [`send_command`].
pub fn read_reply(mut stream: TcpStream) -> std::io::Result<String> {
    let mut buf = vec![0; 64 * 1024];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// One `redis-server` process.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    /// With `--cluster-enabled yes`: the cluster bus port.
    cluster_port: Option<u16>,
    dir: tempfile::TempDir,
}

impl Redis {
    /// A standalone server.
    pub fn start() -> Redis {
        Redis::launch(false)
    }

    /// A server with cluster mode on, not yet part of a cluster.
    fn start_cluster_node() -> Redis {
        Redis::launch(true)
    }

    fn launch(cluster: bool) -> Redis {
        // The free port may be taken between the check and redis binding
        // it: a few attempts on fresh ports.
        for _ in 0..5 {
            let mut redis = Redis {
                child: None,
                port: free_port(),
                cluster_port: cluster.then(free_port),
                dir: tempfile::tempdir().expect("tempdir"),
            };
            if redis.spawn() {
                return redis;
            }
        }
        panic!("redis-server did not start (is it installed?)");
    }

    /// Starts the process on this server's port; whether it answers PING.
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(bus) = self.cluster_port {
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-port", &bus.to_string()])
                .args(["--cluster-node-timeout", "2000"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (apt-get install redis-server)");
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits for `+PONG`; false if the process exited first.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(reply) = redis_command(self.port, &["PING"]) {
                if reply.starts_with("+PONG") {
                    return true;
                }
            }
            let child = self.child.as_mut().expect("started");
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server never answered PING"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `redis://127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis://127.0.0.1:PORT` (cluster nodes have no database number).
    pub fn node_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "redis-server did not start again");
    }

    /// Sends one command; panics if Redis cannot be reached.
    pub fn command(&self, args: &[&str]) -> String {
        redis_command(self.port, args).expect("redis answers")
    }

    /// How many keys the server holds (`DBSIZE`).
    pub fn dbsize(&self) -> u64 {
        let reply = self.command(&["DBSIZE"]);
        reply
            .trim()
            .trim_start_matches(':')
            .parse()
            .unwrap_or_else(|_| panic!("DBSIZE answered {reply:?}"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of primaries only, on loopback ports.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    /// Starts `n` (at least 3) cluster-mode servers and joins them with
    /// `redis-cli --cluster create`, waiting until every node reports
    /// `cluster_state:ok`.
    pub fn start(n: usize) -> RedisCluster {
        let nodes: Vec<Redis> = (0..n).map(|_| Redis::start_cluster_node()).collect();
        let mut cli = Command::new("redis-cli");
        cli.arg("--cluster").arg("create");
        for node in &nodes {
            cli.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = cli
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + PATIENCE;
        for node in &nodes {
            while !node
                .command(&["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
            {
                assert!(Instant::now() < deadline, "the cluster never became ok");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        RedisCluster { nodes }
    }

    /// The seed list for `cluster = [...]`, as TOML.
    pub fn toml_list(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.node_url()))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// Keys held by all nodes together.
    pub fn dbsize(&self) -> u64 {
        self.nodes.iter().map(Redis::dbsize).sum()
    }
}
