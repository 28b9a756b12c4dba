//! Home Assistant MQTT discovery: the retained configs that make the box appear as one
//! device with its entities, no YAML. Pure: topics and JSON only.
//!
//! Entities are per slot, not per singer, so they survive singers coming and going:
//! master and backing volume (`number`), each slot's mute (`switch`) and who holds it
//! (`sensor`), listeners and output underruns (`sensor`), the song playing, its
//! position and the queue's length (`sensor`), and the transport (`button`s: play,
//! pause, stop, next). Every one but the buttons reads the retained `<base>/state`;
//! all are available while `<base>/status` is `online`. Full names, no abbreviations,
//! so that a technician can read them on the broker.

use serde_json::{json, Value};

use super::report::BoxInfo;
use crate::control::room::{GAIN_MAX_DB, GAIN_MIN_DB};
use crate::control::SlotId;

/// One retained discovery message.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `<prefix>/<component>/duetbox_<id>/<object>/config`.
    pub topic: String,
    /// The entity's config.
    pub payload: Value,
}

/// Every discovery config of a box with `slots` stage slots.
pub fn configs(info: &BoxInfo, base: &str, prefix: &str, slots: usize) -> Vec<Config> {
    let node = format!("duetbox_{}", info.id);
    let device = json!({
        "identifiers": [node],
        "name": info.name,
        "manufacturer": "duetbox",
        "model": "duetbox karaoke box",
        "sw_version": info.version,
    });
    let origin = json!({"name": "duetbox", "sw_version": info.version});
    let state_topic = format!("{base}/state");
    let entity = |component: &str, object: &str, name: String, extra: Value| {
        let mut payload = json!({
            "name": name,
            "unique_id": format!("{node}_{object}"),
            "device": device,
            "origin": origin,
            "availability_topic": format!("{base}/status"),
            "payload_available": "online",
            "payload_not_available": "offline",
            "state_topic": state_topic,
        });
        let map = payload.as_object_mut().expect("an object");
        if let Value::Object(extra) = extra {
            map.extend(extra);
        }
        Config {
            topic: format!("{prefix}/{component}/{node}/{object}/config"),
            payload,
        }
    };
    let volume = |object: &str, name: &str, command: &str, field: &str| {
        entity(
            "number",
            object,
            name.into(),
            json!({
                "command_topic": format!("{base}/cmd/{command}"),
                "command_template": "{\"gain_db\": {{ value }}}",
                "value_template": format!("{{{{ value_json.{field} }}}}"),
                "min": GAIN_MIN_DB,
                "max": GAIN_MAX_DB,
                "step": 0.5,
                "mode": "slider",
                "unit_of_measurement": "dB",
                "icon": "mdi:volume-high",
            }),
        )
    };
    let button = |command: &str, name: &str, icon: &str| {
        let mut c = entity(
            "button",
            &format!("song_{command}"),
            name.into(),
            json!({
                "command_topic": format!("{base}/cmd/{command}"),
                "payload_press": "{}",
                "icon": icon,
            }),
        );
        // A button has no state.
        if let Some(map) = c.payload.as_object_mut() {
            map.remove("state_topic");
        }
        c
    };
    let mut out = vec![
        volume("master", "Master volume", "master", "master_gain_db"),
        volume(
            "backing",
            "Backing track volume",
            "backing",
            "backing_gain_db",
        ),
        entity(
            "sensor",
            "listeners",
            "Listeners".into(),
            json!({
                "value_template": "{{ value_json.listeners }}",
                "state_class": "measurement",
                "icon": "mdi:account-group",
            }),
        ),
        entity(
            "sensor",
            "xruns",
            "Output underruns".into(),
            json!({
                "value_template": "{{ value_json.output.xruns }}",
                "state_class": "total_increasing",
                "entity_category": "diagnostic",
                "icon": "mdi:speaker-off",
            }),
        ),
        entity(
            "sensor",
            "song",
            "Song playing".into(),
            json!({
                "value_template": "{{ value_json.song.title if value_json.song else 'none' }}",
                "icon": "mdi:music",
            }),
        ),
        entity(
            "sensor",
            "song_position",
            "Song position".into(),
            json!({
                "value_template": "{{ (value_json.song.position_ms / 1000) | round(0) if value_json.song else 0 }}",
                "unit_of_measurement": "s",
                "icon": "mdi:timer-music",
            }),
        ),
        entity(
            "sensor",
            "queue_length",
            "Songs in the queue".into(),
            json!({
                "value_template": "{{ value_json.queue_length }}",
                "state_class": "measurement",
                "icon": "mdi:playlist-music",
            }),
        ),
        button("play", "Play", "mdi:play"),
        button("pause", "Pause", "mdi:pause"),
        button("stop", "Stop", "mdi:stop"),
        button("next", "Next song", "mdi:skip-next"),
    ];
    for k in 0..slots {
        let slot = SlotId(k).to_string();
        let lower = slot.to_lowercase();
        out.push(entity(
            "switch",
            &format!("slot_{lower}_mute"),
            format!("Slot {slot} muted"),
            json!({
                "command_topic": format!("{base}/cmd/slot"),
                "payload_on": format!("{{\"slot\": \"{slot}\", \"muted\": true}}"),
                "payload_off": format!("{{\"slot\": \"{slot}\", \"muted\": false}}"),
                "value_template":
                    format!("{{{{ 'ON' if value_json.slots[{k}].muted else 'OFF' }}}}"),
                "state_on": "ON",
                "state_off": "OFF",
                "icon": "mdi:microphone-off",
            }),
        ));
        out.push(entity(
            "sensor",
            &format!("slot_{lower}_singer"),
            format!("Slot {slot} singer"),
            json!({
                "value_template": format!("{{{{ value_json.slots[{k}].name or 'empty' }}}}"),
                "icon": "mdi:microphone",
            }),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Home Assistant's documented options (MQTT integration pages for number, switch
    /// and sensor, and the shared availability/device/origin options), the required
    /// ones first.
    const COMMON: &[&str] = &[
        "availability",
        "availability_mode",
        "availability_template",
        "availability_topic",
        "device",
        "enabled_by_default",
        "encoding",
        "entity_category",
        "entity_picture",
        "icon",
        "json_attributes_template",
        "json_attributes_topic",
        "name",
        "origin",
        "payload_available",
        "payload_not_available",
        "qos",
        "unique_id",
    ];
    const NUMBER: (&[&str], &[&str]) = (
        &["command_topic"],
        &[
            "command_template",
            "device_class",
            "max",
            "min",
            "mode",
            "optimistic",
            "payload_reset",
            "retain",
            "state_topic",
            "step",
            "unit_of_measurement",
            "value_template",
        ],
    );
    const SWITCH: (&[&str], &[&str]) = (
        &["command_topic"],
        &[
            "command_template",
            "device_class",
            "optimistic",
            "payload_off",
            "payload_on",
            "retain",
            "state_off",
            "state_on",
            "state_topic",
            "value_template",
        ],
    );
    const SENSOR: (&[&str], &[&str]) = (
        &["state_topic"],
        &[
            "device_class",
            "expire_after",
            "force_update",
            "last_reset_value_template",
            "options",
            "state_class",
            "suggested_display_precision",
            "unit_of_measurement",
            "value_template",
        ],
    );
    const BUTTON: (&[&str], &[&str]) = (
        &["command_topic"],
        &[
            "command_template",
            "device_class",
            "payload_press",
            "retain",
        ],
    );
    const DEVICE: &[&str] = &[
        "configuration_url",
        "connections",
        "hw_version",
        "identifiers",
        "manufacturer",
        "model",
        "model_id",
        "name",
        "serial_number",
        "suggested_area",
        "sw_version",
        "via_device",
    ];
    const ORIGIN: &[&str] = &["name", "sw_version", "support_url"];

    fn info() -> BoxInfo {
        BoxInfo {
            name: "Main room".into(),
            id: "a1b2c3d4e5f6".into(),
            version: "0.1.0".into(),
            output: "null".into(),
        }
    }

    #[test]
    fn every_config_follows_home_assistants_documented_schema() {
        let base = "duetbox/a1b2c3d4e5f6";
        let configs = configs(&info(), base, "homeassistant", 2);
        assert_eq!(configs.len(), 11 + 2 * 2);
        let mut unique = HashSet::new();
        for c in &configs {
            let parts: Vec<&str> = c.topic.split('/').collect();
            assert_eq!(parts.len(), 5, "{}", c.topic);
            assert_eq!(
                (parts[0], parts[2], parts[4]),
                ("homeassistant", "duetbox_a1b2c3d4e5f6", "config")
            );
            for id in [parts[2], parts[3]] {
                assert!(
                    id.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                    "node and object ids are [a-zA-Z0-9_-]: {id}"
                );
            }
            let (required, own) = match parts[1] {
                "number" => NUMBER,
                "switch" => SWITCH,
                "sensor" => SENSOR,
                "button" => BUTTON,
                other => panic!("unexpected component {other}"),
            };
            let p = c.payload.as_object().expect("an object");
            for key in required {
                assert!(p[*key].is_string(), "{}: required `{key}`", c.topic);
            }
            for key in p.keys() {
                assert!(
                    COMMON.contains(&key.as_str())
                        || required.contains(&key.as_str())
                        || own.contains(&key.as_str()),
                    "{}: `{key}` is not a documented option",
                    c.topic
                );
            }
            assert!(unique.insert(p["unique_id"].as_str().unwrap().to_string()));
            assert_eq!(p["availability_topic"], format!("{base}/status"));
            if parts[1] == "button" {
                assert!(
                    p.get("state_topic").is_none(),
                    "{}: a button has no state",
                    c.topic
                );
                let name = p["command_topic"]
                    .as_str()
                    .unwrap()
                    .strip_prefix(&format!("{base}/cmd/"))
                    .unwrap();
                let press = p["payload_press"].as_str().unwrap();
                assert!(
                    crate::mqtt::commands::parse(name, press.as_bytes())
                        .input
                        .is_ok(),
                    "{}: the press is a command the box takes",
                    c.topic
                );
            } else {
                assert_eq!(p["state_topic"], format!("{base}/state"));
            }
            let device = p["device"].as_object().unwrap();
            assert!(device.keys().all(|k| DEVICE.contains(&k.as_str())));
            assert_eq!(device["identifiers"], json!(["duetbox_a1b2c3d4e5f6"]));
            assert!(p["origin"]
                .as_object()
                .unwrap()
                .keys()
                .all(|k| ORIGIN.contains(&k.as_str())));
            assert!(p["origin"]["name"].is_string(), "origin needs a name");
            if let Some(topic) = p.get("command_topic") {
                let topic = topic.as_str().unwrap();
                let name = topic.strip_prefix(&format!("{base}/cmd/")).unwrap();
                assert!(crate::mqtt::commands::NAMES.contains(&name), "{topic}");
            }
            match parts[1] {
                "number" => {
                    let (min, max, step) = (
                        p["min"].as_f64().unwrap(),
                        p["max"].as_f64().unwrap(),
                        p["step"].as_f64().unwrap(),
                    );
                    assert!(min < max && step >= 0.001);
                    assert!(["auto", "box", "slider"].contains(&p["mode"].as_str().unwrap()));
                }
                "sensor" => {
                    if let Some(class) = p.get("state_class") {
                        let class = class.as_str().unwrap();
                        assert!(["measurement", "total", "total_increasing"].contains(&class));
                    }
                }
                _ => {}
            }
            if let Some(category) = p.get("entity_category") {
                assert!(["config", "diagnostic"].contains(&category.as_str().unwrap()));
            }
        }
    }

    #[test]
    fn a_switchs_payloads_are_commands_the_box_takes() {
        let configs = configs(&info(), "b", "homeassistant", 3);
        let switch = configs
            .iter()
            .find(|c| c.topic.ends_with("/slot_c_mute/config"))
            .expect("slot C's mute");
        for (payload, muted) in [("payload_on", true), ("payload_off", false)] {
            let text = switch.payload[payload].as_str().unwrap();
            let parsed = crate::mqtt::commands::parse("slot", text.as_bytes());
            match parsed.input {
                Ok(crate::control::Input::SetSlot { slot, change }) => {
                    assert_eq!(slot, SlotId(2));
                    assert_eq!(change.muted, Some(muted));
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        let number = &configs[0].payload;
        let rendered = number["command_template"]
            .as_str()
            .unwrap()
            .replace("{{ value }}", "-7.5");
        assert!(crate::mqtt::commands::parse("master", rendered.as_bytes())
            .input
            .is_ok());
    }
}
