//! Integration tests: one binary, one module per area (see STYLE.md §7).

mod realtime;
mod tidy;
