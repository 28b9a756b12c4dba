//! A real mosquitto for the panel tests, and a watcher that records what the box says.
//!
//! [`Broker`] runs Debian's mosquitto on 127.0.0.1 with three listeners, as a venue's
//! might be set up: anonymous, user and password, and TLS (a test CA and a server
//! certificate it signs, for 127.0.0.1; PLATFORM.md §4). It keeps no persistence, so
//! after [`Broker::restart`] every retained message on it is one the box sent again.
//! [`Watcher`] is an MQTT 5 client (rumqttc, the box's own client crate, on the
//! anonymous listener) that records every message with the time it arrived.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use super::{free_port, INSTALL_HINT};

/// The user the password listener knows.
pub const USER: &str = "panel";
/// Its password.
pub const PASSWORD: &str = "correct horse";

/// A private mosquitto. Killed by PID on drop.
pub struct Broker {
    child: Option<Child>,
    dir: PathBuf,
    /// Anonymous listener.
    pub anonymous_port: u16,
    /// User and password listener.
    pub password_port: u16,
    /// TLS listener (anonymous).
    pub tls_port: u16,
}

impl Broker {
    /// Writes the certificates, password file and config into `dir` and starts it.
    pub fn start(dir: &Path) -> Broker {
        fs::create_dir_all(dir).expect("create the broker dir");
        write_certificates(dir);
        let passwd = dir.join("passwd");
        let made = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwd)
            .args([USER, PASSWORD])
            .status()
            .unwrap_or_else(|e| panic!("mosquitto_passwd: {e} ({INSTALL_HINT})"));
        assert!(made.success(), "mosquitto_passwd failed");
        let mut broker = Broker {
            child: None,
            dir: dir.to_path_buf(),
            anonymous_port: free_port(),
            password_port: free_port(),
            tls_port: free_port(),
        };
        let d = dir.display();
        fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "user root\npersistence false\nper_listener_settings true\n\
                 log_dest file {d}/mosquitto.log\nlog_type all\nconnection_messages true\n\
                 listener {} 127.0.0.1\nallow_anonymous true\n\
                 listener {} 127.0.0.1\nallow_anonymous false\npassword_file {d}/passwd\n\
                 listener {} 127.0.0.1\nallow_anonymous true\n\
                 cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server-key.pem\n",
                broker.anonymous_port, broker.password_port, broker.tls_port
            ),
        )
        .expect("write mosquitto.conf");
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting mosquitto: {e} ({INSTALL_HINT})"));
        self.child = Some(child);
        let begin = Instant::now();
        for port in [self.anonymous_port, self.password_port, self.tls_port] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    begin.elapsed() < Duration::from_secs(10),
                    "mosquitto did not listen on {port}:\n{}",
                    self.log_text()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Stops it (SIGKILL: a broker that vanishes) and waits for the process to end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports, empty (no persistence); returns once every
    /// listener accepts.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The test CA, for `mqtt.ca_file`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// What mosquitto has logged.
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA, and a server certificate for 127.0.0.1 that it signs (rustls refuses a CA
/// certificate used as the server's own).
fn write_certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "duetbox test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let server_key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("server params")
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
    fs::write(dir.join("server.pem"), server.pem()).expect("write server.pem");
    fs::write(dir.join("server-key.pem"), server_key.serialize_pem()).expect("write the key");
}

/// One message the watcher saw.
#[derive(Clone, Debug)]
pub struct Message {
    /// Topic.
    pub topic: String,
    /// Payload as text.
    pub text: String,
    /// Retained (sent on subscribe from the broker's store).
    pub retain: bool,
    /// MQTT 5 correlation data, if any.
    pub correlation: Option<Bytes>,
    /// When it arrived.
    pub at: Instant,
}

impl Message {
    /// The payload as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", self.topic, self.text))
    }
}

/// An MQTT 5 client on the broker's anonymous listener that records every message on
/// the topics it subscribed to. It reconnects by itself (the broker may restart).
pub struct Watcher {
    client: AsyncClient,
    seen: Arc<Mutex<Vec<Message>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// Connects and subscribes to `filters` (again after every reconnect).
    pub async fn connect(port: u16, name: &str, filters: &[&str]) -> Watcher {
        let mut options = MqttOptions::new(name, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let seen: Arc<Mutex<Vec<Message>>> = Arc::default();
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let task = tokio::spawn({
            let (client, seen) = (client.clone(), seen.clone());
            async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            for f in &filters {
                                let _ = client.subscribe(f.clone(), QoS::AtLeastOnce).await;
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(tx) = subscribed_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let message = Message {
                                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                                text: String::from_utf8_lossy(&p.payload).into_owned(),
                                retain: p.retain,
                                correlation: p.properties.and_then(|p| p.correlation_data),
                                at: Instant::now(),
                            };
                            seen.lock().unwrap().push(message);
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .expect("the watcher subscribed within 10 s")
            .expect("the watcher task runs");
        Watcher { client, seen, task }
    }

    /// Publishes `payload` on `topic` (QoS 1, not retained).
    pub async fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
            .await
            .expect("queue a publish");
    }

    /// Publishes with an MQTT 5 response topic and correlation data.
    pub async fn request(&self, topic: &str, payload: &str, response: &str, correlation: &[u8]) {
        let properties = PublishProperties {
            response_topic: Some(response.to_string()),
            correlation_data: Some(Bytes::copy_from_slice(correlation)),
            ..PublishProperties::default()
        };
        self.client
            .publish_with_properties(
                topic,
                QoS::AtLeastOnce,
                false,
                payload.to_string(),
                properties,
            )
            .await
            .expect("queue a publish");
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Vec<Message> {
        self.seen.lock().unwrap().clone()
    }

    /// Every message seen on `topic`.
    pub fn on(&self, topic: &str) -> Vec<Message> {
        self.seen()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    /// How many messages so far (a mark for [`Watcher::wait_after`]).
    pub fn mark(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits at most `deadline` for a message after `mark` on `topic` that `pred`
    /// accepts; panics naming `what` and the last message on that topic.
    pub async fn wait_after(
        &self,
        mark: usize,
        topic: &str,
        deadline: Duration,
        what: &str,
        pred: impl Fn(&Message) -> bool,
    ) -> Message {
        let begin = Instant::now();
        loop {
            if let Some(m) = self.seen()[mark..]
                .iter()
                .find(|m| m.topic == topic && pred(m))
            {
                return m.clone();
            }
            if begin.elapsed() > deadline {
                let last = self.on(topic).pop();
                panic!("no {what} on {topic} within {deadline:?}; last there: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
