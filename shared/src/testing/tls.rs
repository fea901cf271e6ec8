//! Servers that speak TLS only, each with a certificate from an authority of the test's
//! own (made with `openssl`), which no client trusts unless told to (`SSL_CERT_FILE`):
//! Redis (`rediss://`) and an MQTT broker with a password (`mqtts://`).

use std::path::PathBuf;
use std::process::{Child, Command};

use super::{Launch, Port, free_port, mosquitto_program, run_tool, spawn_listening};

/// A directory of this test's own holding a certificate authority (`ca.pem`) and a
/// certificate for `127.0.0.1` it signed (`server.pem`, key `server.key`), made with
/// `openssl`; no client trusts the authority unless told to (`SSL_CERT_FILE`).
fn test_authority(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("a temporary directory for the certificates");
    let path = |name: &str| dir.join(name).display().to_string();
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    let openssl = |args: &[&str]| run_tool("openssl", args, "apt-get install openssl");
    let (ca_key, ca, key, csr, cert, san) = (
        path("ca.key"),
        path("ca.pem"),
        path("server.key"),
        path("server.csr"),
        path("server.pem"),
        path("san.ext"),
    );
    let ec = "ec_paramgen_curve:prime256v1";
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        ec,
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=herald test CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        ec,
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    openssl(&[
        "x509",
        "-req",
        "-days",
        "1",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-extfile",
        &san,
        "-out",
        &cert,
    ]);
    dir
}

/// A `mosquitto` that speaks TLS only (a certificate from [`test_authority`]) and lets in
/// one user with a password, as a hosted broker would.
pub struct TlsMosquitto {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl TlsMosquitto {
    /// The user it lets in.
    pub const USER: &str = "device-gateway";
    /// That user's password (with characters a URL must escape).
    pub const PASSWORD: &str = "p@ss:w/rd";

    /// Makes the certificates and the password file, and starts the broker on a free port.
    pub fn start() -> Self {
        let dir = test_authority("herald-mqtts");
        let path = |name: &str| dir.join(name).display().to_string();
        run_tool(
            "mosquitto_passwd",
            &["-b", "-c", &path("passwords"), Self::USER, Self::PASSWORD],
            "apt-get install mosquitto",
        );
        let program = mosquitto_program();
        let (child, port) = spawn_listening(Port::Any, |port| {
            let config = dir.join(format!("mosquitto-{port}.conf"));
            // `user root`: run as root (CI), it would otherwise drop to `mosquitto`, which
            // cannot read this test's files.
            let text = format!(
                "user root\nlistener {port} 127.0.0.1\ncertfile {}\nkeyfile {}\n\
                 allow_anonymous false\npassword_file {}\n",
                path("server.pem"),
                path("server.key"),
                path("passwords"),
            );
            std::fs::write(&config, text).expect("the broker's configuration");
            let mut command = Command::new(program);
            command.arg("-c").arg(&config);
            Launch {
                command,
                install: "apt-get install mosquitto",
            }
        });
        Self { child, port, dir }
    }

    /// `mqtts://USER:PASSWORD@127.0.0.1:PORT`, the password escaped.
    pub fn url(&self) -> String {
        format!(
            "mqtts://{}:p%40ss%3Aw%2Frd@127.0.0.1:{}",
            Self::USER,
            self.port
        )
    }

    /// The broker's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The certificate authority that signed the broker's certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

impl Drop for TlsMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` that speaks TLS only, with a certificate for `127.0.0.1` signed by a
/// certificate authority of this test's own (made with `openssl`), which no client trusts
/// unless told to: `SSL_CERT_FILE` pointing at [`TlsRedis::ca_file`].
pub struct TlsRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl TlsRedis {
    /// Makes the certificates and starts the server on a free port.
    pub fn start() -> Self {
        let dir = test_authority("herald-tls");
        let path = |name: &str| dir.join(name).display().to_string();
        let (child, port) = spawn_listening(Port::Any, |port| {
            let mut command = Command::new("redis-server");
            command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                ])
                .args([
                    "--tls-cert-file",
                    &path("server.pem"),
                    "--tls-key-file",
                    &path("server.key"),
                ])
                .args([
                    "--tls-ca-cert-file",
                    &path("ca.pem"),
                    "--tls-auth-clients",
                    "no",
                ])
                .args(["--save", "", "--appendonly", "no"]);
            Launch {
                command,
                install: "apt-get install redis-server",
            }
        });
        Self { child, port, dir }
    }

    /// `rediss://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// The certificate authority that signed the server's certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
