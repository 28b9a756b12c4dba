//! Engine behaviour under virtual time: the "must show" list of the engine's issue.

use std::time::Duration;

use super::testkit::*;
use super::*;

fn quiet() -> SingerSettings {
    SingerSettings::default()
}

#[test]
fn placeholder_runs() {
    let mut h = Harness::new(EngineConfig::default());
    let a = h.add_phone(Signal::tone(440.0), Network::default(), quiet());
    h.run_for(Duration::from_secs(2));
    let s = h.stats(a);
    eprintln!("{s:?}");
}
