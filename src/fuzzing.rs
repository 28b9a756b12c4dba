//! The fuzz targets' entry points: every parser a stranger on the venue Wi-Fi can
//! reach, fed arbitrary bytes. `fuzz/` runs them under libFuzzer (`make fuzz`); the unit
//! test below replays every saved input (the corpus, and every crash ever found) in
//! `make test`, so a fixed bug stays fixed without libFuzzer.
//!
//! Each entry point must return normally for any input: a panic is a bug. They also
//! check the promises their parsers make (a refusal always says why; the answer's fmtp
//! rewrite gives Opus its line; the receive pipeline's output stays finite, its buffers
//! bounded).

use std::sync::OnceLock;
use std::time::Duration;

use crate::config::Config;
use crate::engine::receiver::{Receiver, ReceiverConfig};
use crate::engine::{EngineConfig, JitterConfig};
use crate::http::signaling;
use crate::http::whip::{parse_post, Endpoint};
use crate::rtc;

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/<name>.rs` and the corpus folders call
/// them.
pub const TARGETS: [(&str, Target); 6] = [
    ("signaling", signaling_message),
    ("mqtt_command", mqtt_command),
    ("offer", offer),
    ("whip_request", whip_request),
    ("rtp", rtp),
    ("config", config),
];

/// A WebSocket text frame from a phone.
pub fn signaling_message(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = signaling::parse(&text) {
        assert!(!e.message.is_empty(), "a refusal says why");
    }
}

/// A venue panel's MQTT command: the bytes split at the first NUL into the command's
/// name (the topic's last level) and its payload. A bad one is a named failure, and
/// its result is JSON that says so.
pub fn mqtt_command(data: &[u8]) {
    let (name, payload) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"master"[..], data),
    };
    let name = String::from_utf8_lossy(name);
    let parsed = crate::mqtt::commands::parse(&name, payload);
    let outcome = parsed.input.as_ref().map(|_| ()).map_err(Clone::clone);
    if let Err(f) = &outcome {
        assert!(
            !f.code.is_empty() && !f.message.is_empty(),
            "a failure says why"
        );
    }
    let result = crate::mqtt::commands::result(parsed.name, parsed.id.as_ref(), &outcome);
    assert_eq!(result["ok"], outcome.is_ok());
}

/// An SDP offer: the box's own check, then the answer's fmtp rewrite and the payload
/// type read, on the same text (they run on the stack's answer, which echoes it).
pub fn offer(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = signaling::check_offer(&text, 4);
    let rewritten = rtc::rewrite_opus_fmtp(&text, 64_000);
    if let Some(pt) = rtc::opus_payload_type(&text) {
        let prefix = format!("a=fmtp:{pt} ");
        let in_audio = rewritten.lines().filter(|l| l.starts_with(&prefix)).count();
        assert!(in_audio >= 1, "the rewrite gives Opus an fmtp line");
    }
    let _ = rtc::opus_payload_type(&rewritten);
}

/// A WHIP/WHEP `POST`: the bytes split at NULs into content type, authorization,
/// role, name and body.
pub fn whip_request(data: &[u8]) {
    let mut parts = data.splitn(5, |&b| b == 0);
    let mut field = || parts.next().map(String::from_utf8_lossy);
    let (content_type, authorization, role, name) = (field(), field(), field(), field());
    let body = data.splitn(5, |&b| b == 0).nth(4).unwrap_or_default();
    for endpoint in [Endpoint::Whip, Endpoint::Whep] {
        match parse_post(
            endpoint,
            content_type.as_deref(),
            authorization.as_deref(),
            role.as_deref(),
            name.as_deref(),
            body,
            4,
        ) {
            Ok(post) => {
                let chars = post.name.chars().count();
                assert!(
                    (1..=signaling::MAX_NAME_CHARS).contains(&chars),
                    "name {:?}",
                    post.name
                );
                assert!(!post.name.chars().any(char::is_control));
            }
            Err((status, text)) => {
                assert!((400..500).contains(&status), "status {status}");
                assert!(!text.is_empty(), "a refusal says why");
            }
        }
    }
}

/// One real Opus packet of a tone (20 ms, mono), made once.
fn real_packet() -> &'static [u8] {
    static PACKET: OnceLock<Vec<u8>> = OnceLock::new();
    PACKET.get_or_init(|| {
        let mut enc = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
            .expect("an Opus encoder");
        let _ = enc.set_inband_fec(true);
        let _ = enc.set_packet_loss_perc(10);
        let tone: Vec<f32> = (0..960)
            .map(|k| 0.5 * (2.0 * std::f32::consts::PI * 300.0 * k as f32 / 48_000.0).sin())
            .collect();
        let mut out = [0u8; 1500];
        let n = enc.encode_float(&tone, &mut out).expect("encode");
        out[..n].to_vec()
    })
}

/// RTP into a singer's receive pipeline (the part of the engine that reads what a
/// phone sends: jitter buffer, Opus decoder, concealment, time-scale control): the
/// bytes are a program of packets (real Opus, or the bytes themselves as payload), time
/// steps and periods. The mixing after it never sees packet content. (The engine as a
/// whole is exercised by the property tests of `engine/tests.rs`; here speed counts,
/// and the mixes' Opus encodes would be most of each run.)
pub fn rtp(data: &[u8]) {
    thread_local! {
        // Built once per thread and reset for every input (`reset` returns it to its
        // state after `new`): building it is most of a short input's cost.
        static RECEIVER: std::cell::RefCell<Receiver> = std::cell::RefCell::new(Receiver::new(ReceiverConfig {
            jitter: JitterConfig::default(),
            period_samples: EngineConfig::default().period_samples,
        }));
    }
    RECEIVER.with_borrow_mut(|receiver| {
        receiver.reset();
        rtp_into(receiver, data);
    });
}

fn rtp_into(receiver: &mut Receiver, data: &[u8]) {
    let period = EngineConfig::default().period_samples;
    let mut out = vec![0.0f32; period];
    let mut now = Duration::ZERO;
    let (mut seq, mut ts) = (0u16, 0u32);
    let mut bytes = data.iter().copied();
    let mut next = || bytes.next();
    while let Some(op) = next() {
        match op & 3 {
            // A real packet: sequence and timestamp steps from the input.
            0 => {
                let dseq = next().unwrap_or(1) as i8;
                let dts = i16::from_le_bytes([next().unwrap_or(0), next().unwrap_or(0)]);
                seq = seq.wrapping_add(dseq as u16);
                ts = ts.wrapping_add((i32::from(dts) * 48) as u32);
                let ssrc = u32::from(op >> 2 & 3);
                receiver.handle_packet(ssrc, seq, ts, real_packet(), now);
            }
            // A packet of whatever follows.
            1 => {
                let len = usize::from(next().unwrap_or(0)) * 8;
                let payload: Vec<u8> = (0..len).map_while(|_| next()).collect();
                receiver.handle_packet(0, seq, ts, &payload, now);
            }
            // Time passes without output (a stalled device).
            2 => now += Duration::from_millis(u64::from(next().unwrap_or(0))),
            // A period.
            _ => {
                receiver.render(now, &mut out);
                now += Duration::from_millis(5);
                assert!(out.iter().all(|v| v.is_finite()), "the voice stays finite");
            }
        }
        let (packets, samples) = receiver.buffered();
        assert!(packets <= crate::engine::jitter::PACKET_SLOTS);
        assert!(samples <= 48_000, "fifo holds {samples}");
    }
}

/// A config file (no environment).
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, std::iter::empty()) {
        Ok(config) => {
            // What parses is valid, and its engine section builds.
            assert!(config.validate().is_ok());
            let _ = config.engine();
            let _ = config.limits();
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an error names the key"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every input saved under `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/`
    /// (crashes found, kept as regressions) still runs clean.
    #[test]
    fn every_saved_fuzz_input_runs_clean() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut total = 0;
        for (name, target) in TARGETS {
            let mut n = 0;
            for folder in ["corpus", "artifacts"] {
                let Ok(entries) = std::fs::read_dir(root.join(folder).join(name)) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let data = std::fs::read(entry.path()).expect("a saved input");
                    target(&data);
                    n += 1;
                }
            }
            assert!(n > 0, "no saved inputs for the {name} target");
            total += n;
        }
        assert!(total > 100, "only {total} saved inputs");
    }

    #[test]
    fn a_few_hand_made_inputs_run_clean() {
        signaling_message(br#"{"type":"join","v":1,"name":"a","role":"singer"}"#);
        offer(b"v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 109\r\na=rtpmap:109 opus/48000/2\r\n");
        whip_request(b"application/sdp\0Bearer 1\0singer\0ana\0v=0\r\nm=audio 9 X 1\r\na=rtpmap:1 opus/48000/2\r\n");
        rtp(&[0, 1, 0, 0, 0, 6, 6, 6, 2, 1, 7, 4, 200, 6]);
        config(b"[room]\nmax_singers = 4\n");
        mqtt_command(b"slot\0{\"slot\": \"A\", \"muted\": true}");
    }
}
