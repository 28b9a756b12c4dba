//! State commands on their way to the audio thread, never lost.
//!
//! The audio thread drains its bounded command queue once per period, so the queue is
//! full only when that thread stalls (a hung device, a frozen machine). A command that
//! does not fit waits here and is offered again; meanwhile a newer command for the same
//! state replaces the waiting one (the thread only ever needs the latest settings of a
//! singer, the latest master level, the latest listener count), and a singer who comes
//! and goes before the thread saw either cancels out. So what waits is bounded by the
//! state it describes, not by how many commands were sent: at most three per seat
//! (add, settings, and a removal of the seat's previous singer) plus one each for the
//! master, the backing level, the backing transport, the lead and the listener count (a newer
//! transport command names the newest generation, which flushes whatever an older one
//! would have).
//!
//! Pure: the caller hands in a push function (the real queue, or a test's).

use crate::engine::{Command, SingerId};

/// The commands that did not fit the audio thread's queue yet, coalesced.
#[derive(Debug, Default)]
pub struct EngineLink {
    waiting: Vec<Command>,
}

impl EngineLink {
    /// An empty link.
    pub fn new() -> EngineLink {
        EngineLink::default()
    }

    /// Queues `command` behind the waiting ones, replacing or cancelling what it makes
    /// stale.
    pub fn queue(&mut self, command: Command) {
        match command {
            Command::SetSinger { singer, .. } | Command::SetVoiceDelay { singer, .. } => {
                // A newer setting of the same kind for the same singer replaces it.
                let same = std::mem::discriminant(&command);
                if let Some(slot) = self
                    .waiting
                    .iter_mut()
                    .find(|c| std::mem::discriminant(*c) == same && singer_of(c) == Some(singer))
                {
                    *slot = command;
                    return;
                }
            }
            Command::RemoveSinger(singer) => {
                let added = self
                    .waiting
                    .iter()
                    .any(|c| matches!(c, Command::AddSinger { singer: s, .. } if *s == singer));
                self.waiting.retain(|c| match c {
                    Command::AddSinger { singer: s, .. }
                    | Command::SetSinger { singer: s, .. }
                    | Command::SetVoiceDelay { singer: s, .. } => *s != singer,
                    _ => true,
                });
                if added {
                    // The thread never saw this singer: nothing to remove.
                    return;
                }
            }
            Command::SetMaster { .. }
            | Command::SetBacking { .. }
            | Command::SetListeners(_)
            | Command::SetLead { .. }
            | Command::SetVenueDelay { .. }
            | Command::Backing { .. } => {
                let same = std::mem::discriminant(&command);
                if let Some(slot) = self
                    .waiting
                    .iter_mut()
                    .find(|c| std::mem::discriminant(*c) == same)
                {
                    *slot = command;
                    return;
                }
            }
            Command::AddSinger { .. } => {}
        }
        self.waiting.push(command);
    }

    /// Offers the waiting commands to `push` in order, stopping at the first it
    /// refuses (which stays first in line). Returns how many went through.
    pub fn flush(&mut self, mut push: impl FnMut(Command) -> Result<(), Command>) -> usize {
        let mut sent = 0;
        for &command in &self.waiting {
            if push(command).is_err() {
                break;
            }
            sent += 1;
        }
        self.waiting.drain(..sent);
        sent
    }

    /// Commands still waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

/// The singer a per-singer setting is for.
fn singer_of(command: &Command) -> Option<SingerId> {
    match command {
        Command::SetSinger { singer, .. } | Command::SetVoiceDelay { singer, .. } => Some(*singer),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{SingerId, SingerSettings};

    fn add(n: u32) -> Command {
        Command::AddSinger {
            singer: SingerId(n),
            settings: SingerSettings::default(),
        }
    }

    fn set(n: u32, monitor: f32) -> Command {
        Command::SetSinger {
            singer: SingerId(n),
            settings: SingerSettings {
                monitor,
                ..SingerSettings::default()
            },
        }
    }

    /// A queue of `room` slots, drained by the test.
    fn push_into<'a>(
        queue: &'a mut Vec<Command>,
        room: usize,
    ) -> impl FnMut(Command) -> Result<(), Command> + 'a {
        move |c| {
            if queue.len() < room {
                queue.push(c);
                Ok(())
            } else {
                Err(c)
            }
        }
    }

    #[test]
    fn commands_that_fit_go_through_in_order() {
        let mut link = EngineLink::new();
        link.queue(add(1));
        link.queue(set(1, 0.5));
        link.queue(Command::SetListeners(3));
        let mut queue = Vec::new();
        assert_eq!(link.flush(push_into(&mut queue, 8)), 3);
        assert_eq!(queue, vec![add(1), set(1, 0.5), Command::SetListeners(3)]);
        assert_eq!(link.waiting(), 0);
    }

    #[test]
    fn a_full_queue_keeps_the_rest_for_later_in_order() {
        let mut link = EngineLink::new();
        link.queue(Command::RemoveSinger(SingerId(1)));
        link.queue(add(2));
        link.queue(set(2, 0.3));
        let mut queue = Vec::new();
        assert_eq!(link.flush(push_into(&mut queue, 1)), 1);
        assert_eq!(link.waiting(), 2);
        // The thread drained its queue; the rest follows, removal before the add.
        queue.clear();
        assert_eq!(link.flush(push_into(&mut queue, 8)), 2);
        assert_eq!(queue, vec![add(2), set(2, 0.3)]);
    }

    #[test]
    fn newer_settings_replace_waiting_ones() {
        let mut link = EngineLink::new();
        link.queue(add(1));
        for k in 0..1000 {
            link.queue(set(1, k as f32 / 1000.0));
            link.queue(Command::SetMaster {
                gain_db: -(k as f32) / 100.0,
            });
            link.queue(Command::SetListeners(k));
        }
        assert_eq!(link.waiting(), 4, "one of each, however many were sent");
        let mut queue = Vec::new();
        link.flush(push_into(&mut queue, 8));
        assert_eq!(
            queue,
            vec![
                add(1),
                set(1, 0.999),
                Command::SetMaster { gain_db: -9.99 },
                Command::SetListeners(999)
            ]
        );
    }

    #[test]
    fn a_singer_who_came_and_went_while_the_thread_stalled_cancels_out() {
        let mut link = EngineLink::new();
        for n in 1..=500 {
            link.queue(add(n));
            link.queue(set(n, 0.2));
            link.queue(Command::RemoveSinger(SingerId(n)));
        }
        assert_eq!(link.waiting(), 0);
        // A singer the thread has seen needs its removal delivered.
        link.queue(set(7, 0.1));
        link.queue(Command::RemoveSinger(SingerId(7)));
        let mut queue = Vec::new();
        link.flush(push_into(&mut queue, 8));
        assert_eq!(queue, vec![Command::RemoveSinger(SingerId(7))]);
    }

    #[test]
    fn nothing_is_lost_while_the_thread_is_stalled() {
        let mut link = EngineLink::new();
        let mut queue = Vec::new();
        // The queue is full from the start: everything waits.
        for n in 1..=4 {
            link.queue(add(n));
        }
        link.queue(Command::RemoveSinger(SingerId(9)));
        assert_eq!(link.flush(push_into(&mut queue, 0)), 0);
        assert_eq!(link.waiting(), 5);
        assert_eq!(link.flush(push_into(&mut queue, 8)), 5);
        assert_eq!(queue.len(), 5);
    }
}
