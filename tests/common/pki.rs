//! A throwaway certificate authority for the TLS tests (openssl from Debian's packages).

use std::path::PathBuf;
use std::process::Command;

use super::servers::free_port;

/// A throwaway certificate authority with a server certificate (localhost, 127.0.0.1) and a
/// client certificate, plus an unrelated CA for the wrong-CA cases.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        if Command::new("openssl").arg("version").output().is_err() {
            install_openssl();
        }
        let dir = std::env::temp_dir().join(format!(
            "sweeper-pki-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        pki.ca("ca");
        pki.ca("wrong-ca");
        pki.leaf(
            "server",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment",
        );
        pki.leaf(
            "client",
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment",
        );
        pki
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .current_dir(&self.dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=sweeper test {name}"),
        ]);
    }

    fn leaf(&self, name: &str, ext: &str) {
        std::fs::write(self.dir.join(format!("{name}.ext")), ext).unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            "/CN=localhost",
        ]);
        self.openssl(&[
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

    /// A server certificate naming only `localhost` (no IP address), as managed services issue
    /// them: a client that verifies against the address it dialled (127.0.0.1) refuses it.
    /// Written as `server-dns.crt` / `server-dns.key`.
    pub fn server_dns_only(&self) {
        self.leaf(
            "server-dns",
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment",
        );
    }

    /// A server certificate naming only 127.0.0.1 (no host name), as a self-run cluster's nodes
    /// may have. Written as `server-ip.crt` / `server-ip.key`.
    pub fn server_ip_only(&self) {
        self.leaf(
            "server-ip",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment",
        );
    }

    /// The `redis-server` arguments of a cluster node on TLS for its clients and its bus
    /// (`tls-cluster yes`), with the certificate `server` (`server` or `server-dns`), client
    /// certificates required or not.
    pub fn cluster_node_args(
        &self,
        tls_port: u16,
        server: &str,
        auth_clients: bool,
    ) -> Vec<String> {
        [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &self.path(&format!("{server}.crt")),
            "--tls-key-file",
            &self.path(&format!("{server}.key")),
            // On the bus a node is a client of the others: it shows a client certificate (the
            // server one is for serverAuth only, which the others refuse).
            "--tls-client-cert-file",
            &self.path("client.crt"),
            "--tls-client-key-file",
            &self.path("client.key"),
            "--tls-ca-cert-file",
            &self.path("ca.crt"),
            "--tls-auth-clients",
            if auth_clients { "yes" } else { "no" },
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
        ]
        .map(String::from)
        .to_vec()
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// openssl from Debian's packages, as tests/servers.sh installs the servers (as root).
fn install_openssl() {
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", "openssl"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
}
