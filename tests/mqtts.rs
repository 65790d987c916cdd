//! `mqtts://` against a real Mosquitto TLS listener whose CA the test makes.
//! Runs in the Mosquitto suite (`E2M_TEST_MOSQUITTO=1`): the embedded broker
//! has no TLS listener.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use support::*;

/// A CA and a server certificate for 127.0.0.1, as PEM files in `dir`.
/// Returns the CA file.
fn make_pki(dir: &Path, prefix: &str) -> std::path::PathBuf {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{prefix} test CA"));
    let ca_key = KeyPair::generate().expect("ca key");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca cert");

    let server_params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .expect("server params");
    let server_key = KeyPair::generate().expect("server key");
    let server = server_params
        .signed_by(&server_key, &ca)
        .expect("server cert");

    let ca_file = write_file(dir, &format!("{prefix}-ca.pem"), &ca.pem());
    write_file(dir, &format!("{prefix}-server.pem"), &server.pem());
    write_file(
        dir,
        &format!("{prefix}-server.key"),
        &server_key.serialize_pem(),
    );
    ca_file
}

struct TlsMosquitto {
    child: Child,
    plain_port: u16,
    tls_port: u16,
}

impl TlsMosquitto {
    fn start(dir: &Path) -> Self {
        let plain_port = free_port();
        let tls_port = free_port();
        let conf = write_file(
            dir,
            "mosquitto.conf",
            &format!(
                "allow_anonymous true\npersistence false\n\
                 listener {plain_port} 127.0.0.1\n\
                 listener {tls_port} 127.0.0.1\n\
                 cafile {d}/good-ca.pem\ncertfile {d}/good-server.pem\nkeyfile {d}/good-server.key\n",
                d = dir.display()
            ),
        );
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let me = Self {
            child,
            plain_port,
            tls_port,
        };
        for port in [plain_port, tls_port] {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "mosquitto did not listen"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        me
    }
}

impl Drop for TlsMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto_suite() -> bool {
    // `brokers()` fails the test when the suite is asked for and mosquitto
    // is missing, and says so when the suite is not asked for.
    brokers().contains(&BrokerKind::Mosquitto)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_ca_file_connects_and_a_foreign_ca_is_refused() {
    if !mosquitto_suite() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let good_ca = make_pki(dir.path(), "good");
    let other_ca = make_pki(dir.path(), "other");
    let broker = TlsMosquitto::start(dir.path());
    let url = format!("mqtts://127.0.0.1:{}", broker.tls_port);

    // The right CA: the bridge comes online through TLS and answers a request.
    let mut client = Client::connect(broker.plain_port, &["energy2mqtt/bridge/#"]).await;
    let good_ca = good_ca.display().to_string();
    let mut bridge = Bridge::start(&url, "", &[("E2M_MQTT__CA_FILE", &good_ca)]);
    assert!(
        client
            .expect(Duration::from_secs(10), online)
            .await
            .is_some(),
        "bridge did not come online over mqtts; log:\n{}",
        bridge.log_text()
    );
    client
        .publish(
            "energy2mqtt/bridge/request/health_check",
            r#"{"transaction":"tls1"}"#,
            false,
        )
        .await;
    let resp = client
        .expect(
            Duration::from_secs(5),
            topic_is("energy2mqtt/bridge/response/health_check"),
        )
        .await
        .expect("health_check answered over TLS");
    assert_eq!(resp.json()["status"], "ok");
    assert_eq!(resp.json()["transaction"], "tls1");
    assert_eq!(bridge.terminate(), Some(0));
    client.drain();

    // A CA that did not sign the broker: no connection, a log line that says
    // why, and the bridge keeps running (and retrying).
    let other_ca = other_ca.display().to_string();
    let mut bridge = Bridge::start(&url, "", &[("E2M_MQTT__CA_FILE", &other_ca)]);
    let seen = client.expect(Duration::from_secs(3), online).await;
    assert!(
        seen.is_none(),
        "connected with a CA that did not sign the broker"
    );
    assert!(bridge.is_running(), "bridge exited on a TLS failure");
    let log = bridge.log_text().to_lowercase();
    assert!(
        log.contains("certificate") || log.contains("unknownissuer"),
        "the log does not say the certificate was refused:\n{log}"
    );
    assert_eq!(bridge.terminate(), Some(0));
}
