//! The panel's commands: `<base>/cmd/<name>` with a JSON object, turned into the room's
//! [`Input`]s, and the results that answer them. Pure: no broker, no room.
//!
//! Every field is checked here for its type; ranges are the room's to check (it holds
//! them for every surface), so a value the room refuses comes back as the room's
//! [`Refusal`], mapped by [`refused`]. Unknown fields are an error rather than ignored:
//! a panel author's typo (`"gain"` for `"gain_db"`) must not look like success.

use serde_json::{Map, Value};

use crate::control::night::{BackingSource, EntryId, SyncMode, Transport};
use crate::control::room::{GAIN_MAX_DB, GAIN_MIN_DB, PIN_MAX_CHARS};
use crate::control::{Input, PeerId, Refusal, SlotChange, SlotId};

/// Largest command payload accepted, bytes. The biggest real one is a few dozen.
pub const MAX_PAYLOAD_BYTES: usize = 4096;

/// Longest `id` a command may carry to be echoed in its result, characters.
pub const MAX_ID_CHARS: usize = 64;

/// Every command, as `<base>/cmd/<name>`.
pub const NAMES: [&str; 16] = [
    "master",
    "backing",
    "slot",
    "mute",
    "unmute",
    "kick",
    "singer_limit",
    "pin",
    "clear_pin",
    "play",
    "pause",
    "stop",
    "next",
    "skip",
    "seek",
    "mode",
];

/// Why a command was not carried out: a stable `code` for programs, a `message` for
/// people.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// `bad_json`, `unknown_command`, `bad_field`, `too_large`, `rate_limited`,
    /// `out_of_range`, `unknown_slot`, `empty_slot`, `unknown_peer`, `shutting_down`,
    /// `refused`.
    pub code: &'static str,
    /// What was wrong.
    pub message: String,
}

impl Failure {
    fn new(code: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// A command read from the broker: its name (when it is one of [`NAMES`]), the `id` to
/// echo, and what it asks of the room.
#[derive(Clone, Debug)]
pub struct Parsed {
    /// The command's name, if it is a known one.
    pub name: Option<&'static str>,
    /// The caller's `id` (a string or a number), echoed in the result.
    pub id: Option<Value>,
    /// The input for the room, or why there is none.
    pub input: Result<Input, Failure>,
}

/// Reads one command. Never fails: a bad command is a [`Parsed`] whose input is a
/// [`Failure`].
pub fn parse(name: &str, payload: &[u8]) -> Parsed {
    let known = NAMES.iter().copied().find(|n| *n == name);
    let mut parsed = Parsed {
        name: known,
        id: None,
        input: Err(Failure::new("bad_json", "")),
    };
    if payload.len() > MAX_PAYLOAD_BYTES {
        parsed.input = Err(Failure::new(
            "too_large",
            format!("a command is at most {MAX_PAYLOAD_BYTES} bytes"),
        ));
        return parsed;
    }
    let object = if payload.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(object)) => object,
            Ok(_) => {
                parsed.input = Err(Failure::new(
                    "bad_json",
                    "the payload must be a JSON object",
                ));
                return parsed;
            }
            Err(e) => {
                parsed.input = Err(Failure::new("bad_json", format!("not JSON: {e}")));
                return parsed;
            }
        }
    };
    let mut fields = Fields(object);
    parsed.id = match fields.0.remove("id") {
        None => None,
        Some(Value::String(s)) if s.chars().count() <= MAX_ID_CHARS => Some(Value::String(s)),
        Some(Value::Number(n)) => Some(Value::Number(n)),
        Some(_) => {
            parsed.input = Err(Failure::new(
                "bad_field",
                format!("`id` must be a number or a string of at most {MAX_ID_CHARS} characters"),
            ));
            return parsed;
        }
    };
    parsed.input = match known {
        None => Err(Failure::new(
            "unknown_command",
            format!("commands are {}", NAMES.join(", ")),
        )),
        Some(name) => input(name, &mut fields).and_then(|input| fields.finish().map(|()| input)),
    };
    parsed
}

fn input(name: &str, f: &mut Fields) -> Result<Input, Failure> {
    Ok(match name {
        "master" => Input::SetMaster {
            gain_db: f.number("gain_db")?.ok_or_else(|| missing("gain_db"))?,
        },
        "backing" => {
            let (gain_db, muted) = (f.number("gain_db")?, f.boolean("muted")?);
            let source = f.source()?;
            if gain_db.is_none() && muted.is_none() && source.is_none() {
                return Err(missing("gain_db`, `muted` or `source"));
            }
            Input::SetBacking {
                gain_db,
                muted,
                source,
            }
        }
        "slot" => {
            let slot = f.slot()?;
            let change = SlotChange {
                gain_db: f.number("gain_db")?,
                muted: f.boolean("muted")?,
                pan: f.number("pan")?,
                monitor: f.number("monitor")?,
                reverb: f.number("reverb")?,
            };
            if change == SlotChange::default() {
                return Err(missing("gain_db`, `muted`, `pan`, `monitor` or `reverb"));
            }
            Input::SetSlot { slot, change }
        }
        "mute" | "unmute" => Input::SetSlot {
            slot: f.slot()?,
            change: SlotChange {
                muted: Some(name == "mute"),
                ..SlotChange::default()
            },
        },
        "kick" => match (f.0.contains_key("slot"), f.0.contains_key("peer")) {
            (true, false) => Input::KickSlot { slot: f.slot()? },
            (false, true) => Input::Kick { peer: f.peer()? },
            _ => return Err(Failure::new("bad_field", "give either `slot` or `peer`")),
        },
        "singer_limit" => {
            let limit = match f.0.remove("limit") {
                Some(Value::Number(n)) => n.as_u64().ok_or_else(|| not_a("limit", "count"))?,
                Some(_) => return Err(not_a("limit", "count")),
                None => return Err(missing("limit")),
            };
            Input::SetSingerLimit {
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            }
        }
        "pin" => match f.0.remove("pin") {
            Some(Value::String(pin)) => Input::SetPin { pin: Some(pin) },
            Some(_) => return Err(not_a("pin", "string")),
            None => return Err(missing("pin")),
        },
        "clear_pin" => Input::SetPin { pin: None },
        "play" => Input::Transport(Transport::Play),
        "pause" => Input::Transport(Transport::Pause),
        "stop" => Input::Transport(Transport::Stop),
        // A panel's "skip" button and "next" do the same: end the song playing, start
        // the first entry of the queue.
        "next" | "skip" => Input::Transport(Transport::Next),
        "seek" => {
            let ms = f.number("ms")?.ok_or_else(|| missing("ms"))?;
            if !(0.0..=86_400_000.0).contains(&ms) {
                return Err(Failure::new(
                    "out_of_range",
                    "`ms` must be a time in the song, ms",
                ));
            }
            Input::Transport(Transport::Seek(std::time::Duration::from_millis(ms as u64)))
        }
        "mode" => {
            let entry = match f.0.remove("entry") {
                Some(Value::Number(n)) => n
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| not_a("entry", "queue entry number"))?,
                Some(_) => return Err(not_a("entry", "queue entry number")),
                None => return Err(missing("entry")),
            };
            let mode = match f.0.remove("mode") {
                Some(Value::String(m)) => SyncMode::parse(&m)
                    .ok_or_else(|| Failure::new("bad_field", "`mode` must be stage or in_ear"))?,
                Some(_) => return Err(not_a("mode", "string (stage or in_ear)")),
                None => return Err(missing("mode")),
            };
            Input::SetMode {
                entry: EntryId(entry),
                mode,
            }
        }
        _ => unreachable!("every name in NAMES is handled"),
    })
}

/// The room's refusal of a command, for its result.
pub fn refused(refusal: Refusal) -> Failure {
    let code = match refusal {
        Refusal::OutOfRange(_) => "out_of_range",
        Refusal::UnknownSlot => "unknown_slot",
        Refusal::EmptySlot => "empty_slot",
        Refusal::UnknownPeer => "unknown_peer",
        Refusal::ShuttingDown => "shutting_down",
        _ => "refused",
    };
    let message = match refusal {
        Refusal::OutOfRange("pin") => format!(
            "`pin` must be 1 to {PIN_MAX_CHARS} characters, none of them control characters"
        ),
        Refusal::OutOfRange("limit") => "`limit` must be between 1 and the slots".into(),
        Refusal::OutOfRange(f @ "pan") => format!("`{f}` must be between -1 and 1"),
        Refusal::OutOfRange(f @ ("monitor" | "reverb")) => format!("`{f}` must be between 0 and 1"),
        Refusal::OutOfRange(f) => {
            format!("`{f}` must be between {GAIN_MIN_DB} and {GAIN_MAX_DB} dB")
        }
        other => other.to_string(),
    };
    Failure { code, message }
}

/// The result of a command, for `<base>/result` and the MQTT 5 response topic.
pub fn result(name: Option<&str>, id: Option<&Value>, outcome: &Result<(), Failure>) -> Value {
    let mut out = Map::new();
    out.insert("cmd".into(), name.map_or(Value::Null, Value::from));
    if let Some(id) = id {
        out.insert("id".into(), id.clone());
    }
    out.insert("ok".into(), Value::Bool(outcome.is_ok()));
    if let Err(failure) = outcome {
        out.insert("error".into(), Value::from(failure.code));
        out.insert("message".into(), Value::from(failure.message.as_str()));
    }
    Value::Object(out)
}

fn missing(field: &str) -> Failure {
    Failure::new("bad_field", format!("`{field}` is missing"))
}

fn not_a(field: &str, what: &str) -> Failure {
    Failure::new("bad_field", format!("`{field}` must be a {what}"))
}

/// The fields of one command's object, taken out one by one; what is left is unknown.
struct Fields(Map<String, Value>);

impl Fields {
    fn number(&mut self, field: &str) -> Result<Option<f32>, Failure> {
        match self.0.remove(field) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                // serde_json numbers are finite; an f64 beyond f32 becomes infinite and
                // is then refused by the room's range check like any other.
                Ok(n.as_f64().map(|v| v as f32))
            }
            Some(_) => Err(not_a(field, "number")),
        }
    }

    fn boolean(&mut self, field: &str) -> Result<Option<bool>, Failure> {
        match self.0.remove(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(not_a(field, "boolean")),
        }
    }

    fn source(&mut self) -> Result<Option<BackingSource>, Failure> {
        match self.0.remove("source") {
            None => Ok(None),
            Some(Value::String(s)) => BackingSource::parse(&s).map(Some).ok_or_else(|| {
                Failure::new("bad_field", "`source` must be songs, line_in or whip")
            }),
            Some(_) => Err(not_a("source", "string (songs, line_in or whip)")),
        }
    }

    fn slot(&mut self) -> Result<SlotId, Failure> {
        match self.0.remove("slot") {
            Some(Value::String(s)) => SlotId::parse(&s)
                .ok_or_else(|| Failure::new("bad_field", "`slot` must be a slot name like \"A\"")),
            Some(_) => Err(not_a("slot", "slot name like \"A\"")),
            None => Err(missing("slot")),
        }
    }

    fn peer(&mut self) -> Result<PeerId, Failure> {
        let bad = || Failure::new("bad_field", "`peer` must be a participant id like \"p7\"");
        match self.0.remove("peer") {
            Some(Value::String(s)) => s
                .strip_prefix('p')
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .map(PeerId)
                .ok_or_else(bad),
            Some(_) => Err(bad()),
            None => Err(missing("peer")),
        }
    }

    fn finish(self) -> Result<(), Failure> {
        match self.0.keys().next() {
            None => Ok(()),
            Some(key) => Err(Failure::new(
                "bad_field",
                format!(
                    "unknown field `{}`",
                    key.chars().take(32).collect::<String>()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, payload: &str) -> Result<Input, Failure> {
        parse(name, payload.as_bytes()).input
    }

    fn code(name: &str, payload: &str) -> &'static str {
        match input(name, payload) {
            Ok(i) => panic!("{name} {payload} was accepted as {i:?}"),
            Err(f) => f.code,
        }
    }

    #[test]
    fn the_transport_commands_read_and_refuse_like_the_rest() {
        use crate::control::night::Transport;
        for (name, expected) in [
            ("play", Transport::Play),
            ("pause", Transport::Pause),
            ("stop", Transport::Stop),
            ("next", Transport::Next),
            ("skip", Transport::Next),
        ] {
            assert!(
                matches!(input(name, ""), Ok(Input::Transport(t)) if t == expected),
                "{name}"
            );
        }
        assert!(matches!(
            input("seek", r#"{"ms": 61000}"#),
            Ok(Input::Transport(Transport::Seek(d))) if d == std::time::Duration::from_secs(61)
        ));
        assert_eq!(code("seek", r#"{"ms": -1}"#), "out_of_range");
        assert_eq!(code("seek", r#"{"ms": 1e30}"#), "out_of_range");
        assert_eq!(code("seek", r#"{"ms": "soon"}"#), "bad_field");
        assert_eq!(code("seek", "{}"), "bad_field");
        assert_eq!(
            code("play", r#"{"song": 3}"#),
            "bad_field",
            "unknown fields are refused"
        );
    }

    #[test]
    fn every_command_reads_its_fields() {
        assert!(matches!(
            input("master", r#"{"gain_db": -6.5}"#),
            Ok(Input::SetMaster { gain_db }) if gain_db == -6.5
        ));
        assert!(matches!(
            input("backing", r#"{"muted": true}"#),
            Ok(Input::SetBacking {
                gain_db: None,
                muted: Some(true),
                source: None,
            })
        ));
        assert!(matches!(
            input("backing", r#"{"source": "line_in"}"#),
            Ok(Input::SetBacking {
                gain_db: None,
                muted: None,
                source: Some(BackingSource::LineIn),
            })
        ));
        for bad in [r#"{"source": "radio"}"#, r#"{"source": 1}"#, "{}"] {
            assert!(input("backing", bad).is_err(), "{bad}");
        }
        let Ok(Input::SetSlot { slot, change }) = input(
            "slot",
            r#"{"slot": "b", "gain_db": 3, "monitor": 0.5, "reverb": 0.2}"#,
        ) else {
            panic!("slot");
        };
        assert_eq!(slot, SlotId(1));
        assert_eq!(
            change,
            SlotChange {
                gain_db: Some(3.0),
                monitor: Some(0.5),
                reverb: Some(0.2),
                ..SlotChange::default()
            }
        );
        assert!(matches!(
            input("mute", r#"{"slot": "A"}"#),
            Ok(Input::SetSlot { slot: SlotId(0), change }) if change.muted == Some(true)
        ));
        assert!(matches!(
            input("unmute", r#"{"slot": "A"}"#),
            Ok(Input::SetSlot { slot: SlotId(0), change }) if change.muted == Some(false)
        ));
        assert!(matches!(
            input("kick", r#"{"slot": "B"}"#),
            Ok(Input::KickSlot { slot: SlotId(1) })
        ));
        assert!(matches!(
            input("kick", r#"{"peer": "p17"}"#),
            Ok(Input::Kick { peer: PeerId(17) })
        ));
        assert!(matches!(
            input("singer_limit", r#"{"limit": 1}"#),
            Ok(Input::SetSingerLimit { limit: 1 })
        ));
        assert!(matches!(
            input("pin", r#"{"pin": "2580"}"#),
            Ok(Input::SetPin { pin: Some(p) }) if p == "2580"
        ));
        assert!(matches!(
            input("clear_pin", ""),
            Ok(Input::SetPin { pin: None })
        ));
        assert!(matches!(
            input("clear_pin", "{}"),
            Ok(Input::SetPin { pin: None })
        ));
        assert!(matches!(
            input("mode", r#"{"entry": 7, "mode": "in_ear"}"#),
            Ok(Input::SetMode {
                entry: EntryId(7),
                mode: SyncMode::InEar
            })
        ));
        assert!(matches!(
            input("mode", r#"{"entry": 7, "mode": "stage"}"#),
            Ok(Input::SetMode {
                entry: EntryId(7),
                mode: SyncMode::Stage
            })
        ));
        for (bad, says) in [
            (r#"{"mode": "in_ear"}"#, "`entry` is missing"),
            (r#"{"entry": 7}"#, "`mode` is missing"),
            (
                r#"{"entry": -1, "mode": "stage"}"#,
                "`entry` must be a queue entry number",
            ),
            (
                r#"{"entry": 4294967296, "mode": "stage"}"#,
                "`entry` must be a queue entry number",
            ),
            (
                r#"{"entry": "7", "mode": "stage"}"#,
                "`entry` must be a queue entry number",
            ),
            (
                r#"{"entry": 7, "mode": "headphones"}"#,
                "`mode` must be stage or in_ear",
            ),
            (
                r#"{"entry": 7, "mode": 1}"#,
                "`mode` must be a string (stage or in_ear)",
            ),
            (
                r#"{"entry": 7, "mode": "stage", "song": 1}"#,
                "unknown field `song`",
            ),
        ] {
            let failure = input("mode", bad).expect_err(bad);
            assert_eq!(
                (failure.code, failure.message.as_str()),
                ("bad_field", says),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_commands_are_named_and_never_reach_the_room() {
        assert_eq!(code("master", "{"), "bad_json");
        assert_eq!(code("master", "[1]"), "bad_json");
        assert_eq!(code("master", "-6"), "bad_json");
        assert_eq!(code("master", "{}"), "bad_field");
        assert_eq!(code("master", r#"{"gain_db": "loud"}"#), "bad_field");
        assert_eq!(code("master", r#"{"gain": -6}"#), "bad_field");
        assert_eq!(
            code("master", r#"{"gain_db": -6, "extra": 1}"#),
            "bad_field"
        );
        assert_eq!(code("backing", "{}"), "bad_field");
        assert_eq!(code("slot", r#"{"slot": "A"}"#), "bad_field");
        assert_eq!(code("slot", r#"{"gain_db": 1}"#), "bad_field");
        assert_eq!(
            code("slot", r#"{"slot": "A1", "muted": true}"#),
            "bad_field"
        );
        assert_eq!(code("slot", r#"{"slot": 0, "muted": true}"#), "bad_field");
        assert_eq!(
            code("mute", r#"{"slot": "A", "muted": false}"#),
            "bad_field"
        );
        assert_eq!(code("kick", "{}"), "bad_field");
        assert_eq!(code("kick", r#"{"slot": "A", "peer": "p1"}"#), "bad_field");
        assert_eq!(code("kick", r#"{"peer": "7"}"#), "bad_field");
        assert_eq!(code("kick", r#"{"peer": "p99999999999"}"#), "bad_field");
        assert_eq!(code("singer_limit", r#"{"limit": -1}"#), "bad_field");
        assert_eq!(code("singer_limit", r#"{"limit": 1.5}"#), "bad_field");
        assert_eq!(code("pin", r#"{"pin": 1234}"#), "bad_field");
        assert_eq!(code("pin", "{}"), "bad_field");
        assert_eq!(code("clear_pin", r#"{"pin": "1"}"#), "bad_field");
        assert_eq!(code("reboot", "{}"), "unknown_command");
        assert_eq!(code("Master", r#"{"gain_db": 0}"#), "unknown_command");
        let big = format!(
            r#"{{"gain_db": 0, "id": "{}"}}"#,
            "x".repeat(MAX_PAYLOAD_BYTES)
        );
        assert_eq!(code("master", &big), "too_large");
        assert_eq!(
            code(
                "master",
                &format!(r#"{{"gain_db": 0, "id": "{}"}}"#, "x".repeat(65))
            ),
            "bad_field"
        );
    }

    #[test]
    fn results_echo_the_name_and_id() {
        let parsed = parse("master", br#"{"gain_db": 0, "id": "panel-7"}"#);
        assert_eq!(parsed.name, Some("master"));
        let ok = result(parsed.name, parsed.id.as_ref(), &Ok(()));
        assert_eq!(
            ok,
            serde_json::json!({"cmd": "master", "id": "panel-7", "ok": true})
        );
        let failed = result(
            Some("slot"),
            None,
            &Err(refused(Refusal::OutOfRange("gain_db"))),
        );
        assert_eq!(failed["ok"], false);
        assert_eq!(failed["error"], "out_of_range");
        assert_eq!(failed["message"], "`gain_db` must be between -60 and 12 dB");
        let unknown = parse("../../x", b"{}");
        assert_eq!(result(unknown.name, None, &Ok(()))["cmd"], Value::Null);
    }

    proptest::proptest! {
        #[test]
        fn any_payload_is_a_command_or_a_named_failure(
            name in proptest::sample::select(NAMES.to_vec()),
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            if let Err(f) = parse(name, &payload).input {
                proptest::prop_assert!(!f.code.is_empty() && !f.message.is_empty());
            }
        }
    }
}
