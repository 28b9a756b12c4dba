//! Integration tests: one binary, one module per area (see STYLE.md §7).

mod audio_thread;
mod realtime;
mod tidy;
