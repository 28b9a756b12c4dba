//! Test songs as 16-bit PCM WAV files: the one writer the decoder's and the player's
//! unit tests, the song benchmark and the integration tests use (compiled for tests and
//! the `testkit` feature only).

use std::path::Path;

/// Writes interleaved 16-bit `samples` (`channels` channels at `rate`) as a WAV file.
pub fn write_wav16(path: &Path, rate: u32, channels: u16, samples: &[i16]) {
    let data_len = samples.len() * 2;
    let mut b = Vec::with_capacity(44 + data_len);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    b.extend_from_slice(&(channels * 2).to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data_len as u32).to_le_bytes());
    for s in samples {
        b.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, b).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// A sample in -1..=1 as 16 bits.
pub fn to_i16(v: f32) -> i16 {
    (v.clamp(-1.0, 1.0) * 32767.0).round() as i16
}
