//! Test certificates made with the openssl command line: a private CA and leaf certificates
//! for the names a test serves, and curl as the TLS (HTTP/1.1 and HTTP/2) client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA that signs leaf certificates in `dir`.
pub struct TestCa {
    dir: PathBuf,
    pub cert: PathBuf,
    key: PathBuf,
}

/// A leaf certificate's files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (tests/install.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=levy test CA",
            ],
        );
        TestCa {
            dir: dir.to_path_buf(),
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
        }
    }

    /// Issues `<name>.pem` and `<name>.key` for the subject alternative names `sans`
    /// (`DNS:…`, `IP:…`).
    pub fn issue(&self, name: &str, sans: &[&str]) -> Leaf {
        let (cert, key, csr, ext) = (
            format!("{name}.pem"),
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
        );
        std::fs::write(
            self.dir.join(&ext),
            format!("subjectAltName={}\n", sans.join(",")),
        )
        .expect("write extensions");
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        let (ca_cert, ca_key) = (
            self.cert.display().to_string(),
            self.key.display().to_string(),
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        Leaf {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        }
    }
}

/// What curl saw: its exit code, the HTTP version and status, and the body.
#[derive(Debug)]
pub struct CurlResult {
    pub exit: i32,
    pub version: String,
    pub status: u16,
    pub body: String,
    pub headers: String,
}

/// `curl https://<name>:<port><path>` with `name` resolved to `addr`, trusting `ca`;
/// `http2` picks `--http2` (ALPN h2, falling back) or `--http1.1`; `extra` adds arguments.
pub fn curl(
    ca: &Path,
    name: &str,
    addr: SocketAddr,
    path: &str,
    http2: bool,
    extra: &[&str],
) -> CurlResult {
    let dir = tempfile::tempdir().expect("tempdir");
    let headers = dir.path().join("headers");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{name}:{}:{}", addr.port(), addr.ip()))
        .arg(if http2 { "--http2" } else { "--http1.1" })
        .arg("-D")
        .arg(&headers)
        .args(["-w", "\n%{http_version} %{http_code}"])
        .args(extra)
        .arg(format!("https://{name}:{}{path}", addr.port()))
        .output()
        .expect("run curl (tests/install.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut fields = last.split_whitespace();
    CurlResult {
        exit: out.status.code().unwrap_or(-1),
        version: fields.next().unwrap_or_default().to_owned(),
        status: fields.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        body: body.to_owned(),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
    }
}
