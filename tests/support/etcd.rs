//! A real etcd server (Debian's etcd-server) on a free port, with its own data directory.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct EtcdServer {
    child: Option<Child>,
    /// Network namespace to run in, or `None` for the test's own namespace.
    netns: Option<String>,
    pub ip: String,
    pub client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    /// Client TLS (server cert + required client certs) when set.
    pub tls: Option<TlsMaterial>,
}

/// A CA and certificates made with openssl for one test.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsMaterial {
    /// Creates a CA, a server certificate for `ip` and a client certificate in `dir`.
    pub fn generate(dir: &std::path::Path, ip: &str) -> TlsMaterial {
        let run = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(&[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=weft-test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat());
        for (name, usage, san) in [
            ("server", "serverAuth", format!("IP:{ip}")),
            ("client", "clientAuth", "DNS:weft-client".to_string()),
        ] {
            run(&[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={name}"),
                ],
            ]
            .concat());
            let ext = format!(
                "subjectAltName={san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            );
            std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext file");
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ]);
        }
        TlsMaterial {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl EtcdServer {
    /// Starts etcd on 127.0.0.1 with free ports and waits until it answers.
    pub fn start() -> EtcdServer {
        Self::start_with(None, "127.0.0.1", free_port(), free_port())
    }

    /// Starts etcd inside a network namespace, listening on `ip`.
    pub fn start_in(netns: &str, ip: &str) -> EtcdServer {
        Self::start_with(Some(netns.to_string()), ip, 2379, 2380)
    }

    /// An etcd for `netns` that is not started yet (see [`EtcdServer::launch`]).
    pub fn prepare_in(netns: &str, ip: &str) -> EtcdServer {
        EtcdServer {
            child: None,
            netns: Some(netns.to_string()),
            ip: ip.to_string(),
            client_port: 2379,
            peer_port: 2380,
            dir: tempfile::tempdir().expect("tempdir for etcd"),
            tls: None,
        }
    }

    /// Starts etcd on 127.0.0.1 serving TLS and requiring client certificates.
    pub fn start_tls() -> EtcdServer {
        let dir = tempfile::tempdir().expect("tempdir for etcd");
        let tls = TlsMaterial::generate(dir.path(), "127.0.0.1");
        let mut server = EtcdServer {
            child: None,
            netns: None,
            ip: "127.0.0.1".into(),
            client_port: free_port(),
            peer_port: free_port(),
            dir,
            tls: Some(tls),
        };
        server.launch();
        server
    }

    fn start_with(netns: Option<String>, ip: &str, client_port: u16, peer_port: u16) -> EtcdServer {
        let dir = tempfile::tempdir().expect("tempdir for etcd");
        let mut server = EtcdServer {
            child: None,
            netns,
            ip: ip.to_string(),
            client_port,
            peer_port,
            dir,
            tls: None,
        };
        server.launch();
        server
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.ip, self.client_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn command(&self, program: &str) -> Command {
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        };
        if let Some(tls) = &self.tls {
            if program == "etcdctl" {
                command.arg(format!("--cacert={}", tls.ca.display()));
                command.arg(format!("--cert={}", tls.client_cert.display()));
                command.arg(format!("--key={}", tls.client_key.display()));
            } else {
                command.arg(format!("--trusted-ca-file={}", tls.ca.display()));
                command.arg(format!("--cert-file={}", tls.server_cert.display()));
                command.arg(format!("--key-file={}", tls.server_key.display()));
                command.arg("--client-cert-auth");
            }
        }
        command
    }

    /// Starts etcd and waits until it is healthy.
    pub fn launch(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://{}:{}", self.ip, self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log file");
        let child = self
            .command("etcd")
            .args([
                "--name=weft-test",
                &format!("--data-dir={}", self.dir.path().join("data").display()),
                &format!("--listen-client-urls={client}"),
                &format!("--advertise-client-urls={client}"),
                &format!("--listen-peer-urls={peer}"),
                &format!("--initial-advertise-peer-urls={peer}"),
                &format!("--initial-cluster=weft-test={peer}"),
                "--log-level=warn",
                "--logger=zap",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("cannot start etcd: is Debian's etcd-server installed?");
        self.child = Some(child);
        let healthy =
            super::wait_for_result("etcd to become healthy", Duration::from_secs(20), || {
                let status = self
                    .command("etcdctl")
                    .args([
                        "--endpoints",
                        &self.endpoint(),
                        "--dial-timeout=1s",
                        "--command-timeout=2s",
                        "endpoint",
                        "health",
                    ])
                    .env("ETCDCTL_API", "3")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .ok()?;
                status.success().then_some(())
            });
        if healthy.is_none() {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            panic!("etcd did not become healthy; its log:\n{log}");
        }
    }

    /// Stops etcd (SIGKILL), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again with the same data and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops etcd, throws its data away and starts it again empty (a new cluster ID and
    /// revision 1), as after a lost data directory.
    pub fn restart_empty(&mut self) {
        self.stop();
        std::fs::remove_dir_all(self.data_dir()).expect("remove etcd's data directory");
        self.launch();
    }

    /// Saves a snapshot of the store to `path` (`etcdctl snapshot save`).
    pub fn snapshot_save(&self, path: &std::path::Path) {
        self.etcdctl(&["snapshot", "save", &path.display().to_string()]);
    }

    /// Stops etcd and restarts it from `snapshot` (`etcdctl snapshot restore`), as an
    /// operator restoring a backup does: the store goes back to the snapshot's revision.
    pub fn restore_from(&mut self, snapshot: &std::path::Path) {
        self.stop();
        std::fs::remove_dir_all(self.data_dir()).expect("remove etcd's data directory");
        let peer = format!("http://{}:{}", self.ip, self.peer_port);
        let output = self
            .command("etcdctl")
            .args([
                "snapshot",
                "restore",
                &snapshot.display().to_string(),
                "--name=weft-test",
                &format!("--data-dir={}", self.data_dir().display()),
                &format!("--initial-cluster=weft-test={peer}"),
                &format!("--initial-advertise-peer-urls={peer}"),
            ])
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl snapshot restore");
        assert!(
            output.status.success(),
            "snapshot restore failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.launch();
    }

    /// A plain-http client (for TLS servers use etcdctl).
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint()], None)
            .await
            .expect("etcd client")
    }

    /// Runs etcdctl against this server and returns its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let output = self
            .command("etcdctl")
            .args(["--endpoints", &self.endpoint()])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl");
        assert!(
            output.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
