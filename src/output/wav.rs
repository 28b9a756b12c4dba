//! A WAV file output (16-bit stereo, 48 kHz), paced in real time like `null`.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::NullSink;
use crate::audio::{Sink, SinkError};
use crate::engine::SAMPLE_RATE_HZ;

/// Writes the venue mix to a WAV file.
pub struct WavSink {
    path: PathBuf,
    file: BufWriter<File>,
    frames: u64,
    pacer: NullSink,
    buf: Vec<u8>,
}

impl WavSink {
    /// Creates (truncates) `path` and writes a header to be completed on every write.
    pub fn create(path: &Path, period_frames: usize) -> Result<WavSink, SinkError> {
        let file = File::create(path)
            .map_err(|e| SinkError(format!("creating {}: {e}", path.display())))?;
        let mut sink = WavSink {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            frames: 0,
            pacer: NullSink::new(period_frames),
            buf: Vec::with_capacity(period_frames * 4),
        };
        sink.write_header().map_err(|e| sink.error(e))?;
        Ok(sink)
    }

    fn error(&self, e: std::io::Error) -> SinkError {
        SinkError(format!("writing {}: {e}", self.path.display()))
    }

    fn write_header(&mut self) -> std::io::Result<()> {
        let data_bytes = (self.frames * 4).min(u32::MAX as u64 - 36) as u32;
        let f = &mut self.file;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(b"RIFF")?;
        f.write_all(&(36 + data_bytes).to_le_bytes())?;
        f.write_all(b"WAVEfmt ")?;
        f.write_all(&16u32.to_le_bytes())?;
        f.write_all(&1u16.to_le_bytes())?; // PCM
        f.write_all(&2u16.to_le_bytes())?; // stereo
        f.write_all(&SAMPLE_RATE_HZ.to_le_bytes())?;
        f.write_all(&(SAMPLE_RATE_HZ * 4).to_le_bytes())?;
        f.write_all(&4u16.to_le_bytes())?;
        f.write_all(&16u16.to_le_bytes())?;
        f.write_all(b"data")?;
        f.write_all(&data_bytes.to_le_bytes())?;
        f.seek(SeekFrom::End(0))?;
        Ok(())
    }
}

impl Sink for WavSink {
    fn period_frames(&self) -> usize {
        self.pacer.period_frames()
    }

    fn write(&mut self, stereo: &[f32]) -> Result<(), SinkError> {
        self.buf.clear();
        for &v in stereo {
            let s = (v.clamp(-1.0, 1.0) * i16::MAX as f32) as i16;
            self.buf.extend_from_slice(&s.to_le_bytes());
        }
        self.file.write_all(&self.buf).map_err(|e| self.error(e))?;
        self.frames += (stereo.len() / 2) as u64;
        // Keep the header valid about once a second, so a killed box leaves a playable file.
        if self.frames % u64::from(SAMPLE_RATE_HZ) < (stereo.len() / 2) as u64 {
            self.write_header()
                .and_then(|_| self.file.flush())
                .map_err(|e| self.error(e))?;
        }
        self.pacer.pace();
        Ok(())
    }

    fn xruns(&self) -> u64 {
        self.pacer.xruns()
    }

    fn describe(&self) -> String {
        format!("wav:{}", self.path.display())
    }
}

impl Drop for WavSink {
    fn drop(&mut self) {
        let _ = self.write_header();
        let _ = self.file.flush();
    }
}
