//! Proves that the hub–agent frame decoders never panic, never buffer more
//! than one frame's limit, and stay poisoned after an error, whatever bytes a
//! peer sends and however they are split. The first input byte picks the
//! stream (control or chunk) and the split size.
#![no_main]

use flotilla_protocol::wire::{ChunkFrame, ControlFrame, FrameDecoder};
use flotilla_protocol::Limits;
use libfuzzer_sys::fuzz_target;

fn run<F: flotilla_protocol::wire::Frame>(max: u64, split: usize, data: &[u8]) {
    let mut d = FrameDecoder::<F>::new(max, Limits::default());
    for piece in data.chunks(split.max(1)) {
        let mut input = piece;
        loop {
            match d.decode(&mut input) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => {
                    let mut again: &[u8] = &[0, 0, 0, 1, 0];
                    assert!(d.decode(&mut again).is_err(), "a decoder must stay poisoned after an error");
                    return;
                }
            }
        }
        assert!(d.buffered() as u64 <= max + 4, "buffered past one frame");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let l = Limits::default();
    let split = usize::from(mode >> 1) + 1;
    if mode & 1 == 0 {
        run::<ControlFrame>(l.max_control_frame_bytes, split, rest);
    } else {
        run::<ChunkFrame>(l.max_chunk_frame_bytes, split, rest);
    }
});
