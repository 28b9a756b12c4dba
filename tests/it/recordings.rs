//! Every song recorded, against a real box (in-process, venue output to a real-time
//! WAV): after the song its singer's phone gets the link, the host page lists it, the
//! files download over HTTPS and decode (ffmpeg) to tracks of one length holding the
//! song; a stranger gets nothing and guesses nothing. A full disk (a small tmpfs)
//! stops the recording with a reason the host reads, and the music plays on whole.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::songs::{config, curl, id_of, runs, Night, WINDOW};
use crate::support::songs::{song, tones_by_window};
use crate::support::wss::{Phone, Received};
use crate::support::{box_dir, read_wav_left, start_box, SERIAL};

/// Downloads `url` (the box's HTTPS side) to `to`; the HTTP status.
fn download(url: &str, to: &Path) -> String {
    let out = Command::new("curl")
        .args(["-sk", "-o"])
        .arg(to)
        .args(["-w", "%{http_code}", url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Decodes an Ogg Opus file to a 48 kHz WAV with ffmpeg; its left channel.
pub(crate) fn decode(opus: &Path) -> Vec<f32> {
    let wav = opus.with_extension("wav");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(opus)
        .args(["-ar", "48000", "-c:a", "pcm_s16le", "-bitexact"])
        .arg(&wav)
        .status()
        .expect("ffmpeg");
    assert!(status.success(), "ffmpeg decodes {}", opus.display());
    read_wav_left(&wav)
}

/// Reads the phone's messages for `within`: the `recordings` messages it got.
async fn recordings_seen(phone: &mut Phone, within: Duration) -> Vec<Value> {
    let begin = Instant::now();
    let mut seen = Vec::new();
    while begin.elapsed() < within {
        match tokio::time::timeout(Duration::from_millis(300), phone.next()).await {
            Ok(Received::Json(v)) if v["type"] == "recordings" => seen.push(v),
            Ok(Received::Closed(c)) => panic!("the phone was closed: {c:?}"),
            _ => {}
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_song_is_recorded_and_only_its_singer_and_the_host_get_the_link() {
    let _serial = SERIAL.lock().await;
    let dir = box_dir("recordings-kept");
    let library = dir.join("library");
    song(&library, "Keepers - Kept.wav", 48_000, &[(440.0, 3.0)]);
    let out = dir.join("venue.wav");
    let (running, base) = start_box(config(&dir, &library, &out)).await;
    let mut night = Night::open(running.https_addr).await;
    // Zed is in the room, a singer too, but not in this song.
    let mut zed = Phone::connect(running.https_addr).await;
    zed.send(json!({"type": "join", "v": 1, "name": "Zed", "role": "singer"}))
        .await;
    zed.expect("welcome").await;
    let songs = night.songs(1).await;
    let entry = night.add(&id_of(&songs, "Kept")).await;
    night.start(entry).await;
    night.ended().await;

    // Ana's phone gets her recording: its page, its files, its length.
    let mine = night.singer.expect("recordings").await;
    let list = mine["recordings"].as_array().expect("a list").clone();
    assert_eq!(list.len(), 1, "{mine}");
    let take = &list[0];
    assert_eq!(take["title"], "Kept", "{take}");
    assert_eq!(take["singers"], json!(["Ana"]), "{take}");
    let url = take["url"].as_str().expect("url").to_string();
    let id = url
        .strip_prefix("/recordings/")
        .expect("a recording's page");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "an unguessable id: {url}"
    );
    let files: Vec<String> = take["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f.as_str().expect("a name").to_string())
        .collect();
    assert_eq!(
        files,
        ["mix.opus", "backing.opus", "voice-a-ana.opus"],
        "{take}"
    );
    // The host page lists it with the same link; Zed never hears of it.
    let host = crate::songs::host_room_until(&mut night.host, "the host lists it", |v| {
        v["recording"]["recordings"]
            .as_array()
            .is_some_and(|r| r.len() == 1)
    })
    .await;
    assert_eq!(host["recording"]["recordings"][0]["url"], url.as_str());
    assert_eq!(host["recording"]["problem"], Value::Null, "{host}");
    let zed_saw = recordings_seen(&mut zed, Duration::from_secs(1)).await;
    assert!(zed_saw.is_empty(), "a stranger got a link: {zed_saw:?}");

    // The page lists the files and shows its QR code; each file downloads.
    let (code, page) = curl(&format!("{base}{url}"));
    assert_eq!(code, "200", "{page}");
    for f in &files {
        assert!(page.contains(&format!("{url}/{f}")), "{f} on the page");
    }
    let (code, svg) = curl(&format!("{base}{url}/qr.svg"));
    assert_eq!(code, "200");
    assert!(svg.starts_with("<svg"), "{svg:.80}");
    let got = dir.join("got");
    std::fs::create_dir_all(&got).unwrap();
    let mut tracks = Vec::new();
    for f in &files {
        let to = got.join(f);
        assert_eq!(download(&format!("{base}{url}/{f}"), &to), "200", "{f}");
        tracks.push((f.clone(), decode(&to)));
    }
    // Guesses and tricks find nothing: another id, a bad one, a file not of the
    // recorder's, a way out of the folder.
    let other = format!("/recordings/{:032x}", 0x5eed_u128);
    for path in [
        other.clone(),
        format!("{other}/mix.opus"),
        format!("/recordings/{}", &id[..31]),
        format!("/recordings/{}/mix.opus", id.to_uppercase()),
        format!("{url}/voice-../../library.json"),
        format!("{url}/..%2f..%2flibrary.json"),
        format!("{url}/../../host_pin"),
        format!("{url}/notes.txt"),
    ] {
        let (code, body) = curl(&format!("{base}{path}"));
        assert_eq!(code, "404", "{path}: {body:.200}");
    }
    drop(night);
    drop(zed);
    running.stop().await.expect("the box stops");

    // Every track is the song's length (3 s) to the millisecond, and holds the song
    // where it should: the backing and the mix the tone at the backing level, Ana's
    // voice (a phone that sent no media) silence.
    let lengths: Vec<usize> = tracks.iter().map(|(_, t)| t.len()).collect();
    for (f, t) in &tracks {
        assert!(
            t.len().abs_diff(144_000) <= 48 * 40,
            "{f}: {} frames for a 3 s song",
            t.len()
        );
        assert!(t.len().abs_diff(lengths[0]) <= 48, "{f}: {lengths:?}");
    }
    let (mix, backing, voice) = (&tracks[0].1, &tracks[1].1, &tracks[2].1);
    // The song's tone is 0.5 at the -6 dB backing level: 0.25, from its first 10 ms
    // (no count-in here: the recording holds what played before the box knew where
    // the song started) to its end.
    for (from, to) in [(480, 4_800), (24_000, 120_000)] {
        for (name, t) in [("backing", backing), ("mix", mix)] {
            let level = duetbox::engine::testkit::tone_level(&t[from..to], 440.0);
            assert!((0.2..=0.3).contains(&level), "{name} {from}..{to}: {level}");
        }
    }
    let peak = voice.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(peak < 0.01, "a silent voice: {peak}");
    let on_disk = dir.join("state").join("recordings").join(id);
    assert!(on_disk.join("mix.opus").is_file(), "{}", on_disk.display());
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, bytes: usize) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes}"),
                "duetbox-test",
            ])
            .arg(at)
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a tmpfs (the tests run as root)");
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_recording_and_the_music_plays_on() {
    let _serial = SERIAL.lock().await;
    let dir = box_dir("recordings-full");
    let library = dir.join("library");
    song(&library, "Fillers - Full.wav", 48_000, &[(440.0, 6.0)]);
    let out = dir.join("venue.wav");
    let disk = SmallDisk::mount(&dir.join("small"), 64 * 1024);
    // Little room left: the recording fills it within its first seconds.
    std::fs::write(disk.0.join("filler"), vec![0u8; 40 * 1024]).expect("the filler");
    let mut config = config(&dir, &library, &out);
    config.songs.recordings = disk.0.join("recordings").display().to_string();
    let (running, _) = start_box(config).await;
    let mut night = Night::open(running.https_addr).await;
    let songs = night.songs(1).await;
    let entry = night.add(&id_of(&songs, "Full")).await;
    night.start(entry).await;
    let host = crate::songs::host_room_until(&mut night.host, "the host reads why", |v| {
        !v["recording"]["problem"].is_null()
    })
    .await;
    let problem = host["recording"]["problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains("Full") && problem.contains("disk is full"),
        "{problem}"
    );
    assert_eq!(host["recording"]["now"], Value::Null, "{host}");
    // The song plays on to its end; the singer is offered no broken recording.
    night.ended().await;
    let mine = recordings_seen(&mut night.singer, Duration::from_secs(1)).await;
    assert!(mine.is_empty(), "no recording to offer: {mine:?}");
    drop(night);
    running.stop().await.expect("the box stops");
    drop(disk);

    // The venue heard the whole song: 6 s of its tone, one unbroken run.
    let left = read_wav_left(&out);
    let tones = tones_by_window(&left, &[440.0], WINDOW, 0.05);
    let played: Vec<(f32, usize)> = runs(&tones).into_iter().filter(|r| r.0 > 0.0).collect();
    assert_eq!(played.len(), 1, "one unbroken song: {played:?}");
    assert!((58..=61).contains(&played[0].1), "{played:?}");
}
