//! Property tests of the codec over every frame type: round trips through any
//! split of the byte stream, and no panic on arbitrary bytes.

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::digest::Sha256Digest;
use crate::manifest::Accelerator;
use crate::time::UtcTime;

fn arb_digest() -> impl Strategy<Value = Sha256Digest> {
    any::<[u8; 32]>().prop_map(Sha256Digest)
}

fn arb_bytes(max: usize) -> impl Strategy<Value = ByteBuf> {
    vec(any::<u8>(), 0..max).prop_map(ByteBuf)
}

fn arb_state() -> impl Strategy<Value = DeploymentState> {
    prop_oneof![
        (any::<u64>(), any::<u64>())
            .prop_map(|(have, need)| DeploymentState::Fetching { have, need }),
        Just(DeploymentState::Staged),
        Just(DeploymentState::Trial),
        Just(DeploymentState::Active),
        "\\PC{0,40}".prop_map(|reason| DeploymentState::Failed { reason }),
        "\\PC{0,40}".prop_map(|reason| DeploymentState::RolledBack { reason }),
    ]
}

fn arb_status() -> impl Strategy<Value = DeploymentStatus> {
    (
        "[a-z]{1,12}",
        "[a-z]{1,12}",
        "[a-z/0-9.]{1,40}",
        arb_state(),
        proptest::option::of("[a-z/0-9.]{1,40}"),
        any::<u64>(),
        0i64..253_402_300_800,
    )
        .prop_map(
            |(endpoint, deployment, target, state, active, director_version, since)| {
                DeploymentStatus {
                    endpoint,
                    deployment,
                    target,
                    state,
                    active,
                    director_version,
                    since: UtcTime(since),
                }
            },
        )
}

fn arb_hello() -> impl Strategy<Value = AgentHello> {
    let accel =
        ("\\PC{0,20}", any::<u64>(), any::<bool>()).prop_map(|(name, memory_bytes, cuda)| {
            AcceleratorInfo {
                kind: if cuda {
                    Accelerator::Cuda
                } else {
                    Accelerator::Cpu
                },
                name,
                memory_bytes,
            }
        });
    (
        "[a-z0-9-]{1,20}",
        "[0-9.]{1,10}",
        any::<u32>(),
        any::<u64>(),
        vec(accel, 0..4),
        vec(arb_status(), 0..4),
        (
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
        ),
    )
        .prop_map(
            |(device_id, agent_version, cpus, memory_bytes, accelerators, state, t)| AgentHello {
                device_id,
                agent_version,
                inventory: Inventory {
                    cpus,
                    memory_bytes,
                    accelerators,
                },
                state,
                trusted: TrustedVersions {
                    root: t.0,
                    timestamp: t.1,
                    snapshot: t.2,
                    targets: t.3,
                    director: t.4,
                },
            },
        )
}

fn arb_control() -> impl Strategy<Value = ControlFrame> {
    prop_oneof![
        arb_hello().prop_map(ControlFrame::AgentHello),
        (
            vec(arb_bytes(64), 0..3),
            arb_bytes(64),
            arb_bytes(64),
            proptest::option::of(arb_bytes(300)),
            proptest::option::of(arb_bytes(64)),
        )
            .prop_map(|(roots, timestamp, snapshot, targets, director)| {
                ControlFrame::MetadataUpdate(MetadataUpdate {
                    roots,
                    timestamp,
                    snapshot,
                    targets,
                    director,
                })
            }),
        arb_status().prop_map(ControlFrame::DeploymentStatus),
        any::<u64>().prop_map(|nonce| ControlFrame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| ControlFrame::Pong { nonce }),
        "\\PC{0,40}".prop_map(|reason| ControlFrame::Goodbye { reason }),
    ]
}

fn arb_chunk() -> impl Strategy<Value = ChunkFrame> {
    prop_oneof![
        vec(arb_digest(), 0..8).prop_map(|digests| ChunkFrame::ChunkRequest { digests }),
        (arb_digest(), arb_bytes(2000))
            .prop_map(|(digest, bytes)| ChunkFrame::ChunkData { digest, bytes }),
        arb_digest().prop_map(|digest| ChunkFrame::ChunkMissing { digest }),
    ]
}

/// Encodes `frames` back to back, feeds the stream to a decoder cut at `cuts`,
/// and returns what came out.
fn through_decoder<F: Frame>(frames: &[F], cuts: &[usize]) -> Vec<F> {
    let limits = Limits::default();
    let mut stream = Vec::new();
    for f in frames {
        stream.extend(encode_frame(f, u64::from(u32::MAX)).unwrap());
    }
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.push(0);
    points.push(stream.len());
    points.sort_unstable();
    let mut dec = FrameDecoder::<F>::new(u64::from(u32::MAX), limits);
    let mut out = Vec::new();
    for w in points.windows(2) {
        let mut piece = &stream[w[0]..w[1]];
        while let Some(f) = dec.decode(&mut piece).unwrap() {
            out.push(f);
        }
        assert!(piece.is_empty());
    }
    dec.finish().unwrap();
    out
}

proptest! {
    #[test]
    fn control_frames_round_trip_through_any_split(
        frames in vec(arb_control(), 1..5),
        cuts in vec(any::<usize>(), 0..8),
    ) {
        prop_assert_eq!(through_decoder(&frames, &cuts), frames);
    }

    #[test]
    fn chunk_frames_round_trip_through_any_split(
        frames in vec(arb_chunk(), 1..5),
        cuts in vec(any::<usize>(), 0..8),
    ) {
        prop_assert_eq!(through_decoder(&frames, &cuts), frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(
        bytes in vec(any::<u8>(), 0..600),
        cut in any::<usize>(),
    ) {
        let mut c = FrameDecoder::<ControlFrame>::new(1024, Limits::default());
        let mut k = FrameDecoder::<ChunkFrame>::new(1024, Limits::default());
        let (a, b) = bytes.split_at(cut % (bytes.len() + 1));
        for piece in [a, b] {
            let mut p = piece;
            while let Ok(Some(_)) = c.decode(&mut p) {}
            let mut p = piece;
            while let Ok(Some(_)) = k.decode(&mut p) {}
        }
        prop_assert!(c.buffered() <= 1024 + LENGTH_PREFIX_BYTES);
    }

    #[test]
    fn arbitrary_frame_bodies_never_panic_and_stay_bounded(
        body in vec(any::<u8>(), 0..600),
    ) {
        let mut stream = (body.len() as u32).to_be_bytes().to_vec();
        stream.extend(&body);
        let mut dec = FrameDecoder::<ControlFrame>::new(1024, Limits::default());
        let mut p = &stream[..];
        let _ = dec.decode(&mut p);
        let mut dec = FrameDecoder::<ChunkFrame>::new(1024, Limits::default());
        let mut p = &stream[..];
        let _ = dec.decode(&mut p);
    }
}

#[test]
fn an_oversized_length_prefix_is_refused_before_buffering() {
    let mut dec = FrameDecoder::<ChunkFrame>::new(1000, Limits::default());
    let mut input = &[0u8, 0, 0x03, 0xe9, 1, 2, 3][..];
    assert_eq!(
        dec.decode(&mut input),
        Err(WireError::FrameTooLarge {
            announced: 1001,
            limit: 1000
        })
    );
    assert_eq!(dec.buffered(), 0);
    assert_eq!(dec.decode(&mut &[0u8][..]), Err(WireError::Poisoned));
}

#[test]
fn a_frame_from_a_future_schema_gets_a_clear_error() {
    let mut body = Vec::new();
    ciborium::into_writer(&(7u32, "whatever"), &mut body).unwrap();
    let mut stream = (body.len() as u32).to_be_bytes().to_vec();
    stream.extend(&body);
    let mut dec = FrameDecoder::<ControlFrame>::new(1000, Limits::default());
    assert_eq!(
        dec.decode(&mut &stream[..]),
        Err(WireError::UnsupportedSchema(7))
    );
}

#[test]
fn bytes_after_the_cbor_value_are_rejected() {
    let mut stream = encode_frame(&ControlFrame::Ping { nonce: 1 }, 1000).unwrap();
    stream.push(0);
    let len = (stream.len() - LENGTH_PREFIX_BYTES) as u32;
    stream[..4].copy_from_slice(&len.to_be_bytes());
    let mut dec = FrameDecoder::<ControlFrame>::new(1000, Limits::default());
    assert_eq!(
        dec.decode(&mut &stream[..]),
        Err(WireError::TrailingBytes { extra: 1 })
    );
}

#[test]
fn a_chunk_frame_on_the_control_stream_is_a_decode_error() {
    let stream = encode_frame(
        &ChunkFrame::ChunkMissing {
            digest: Sha256Digest([0; 32]),
        },
        1000,
    )
    .unwrap();
    let mut dec = FrameDecoder::<ControlFrame>::new(1000, Limits::default());
    assert!(matches!(
        dec.decode(&mut &stream[..]),
        Err(WireError::Decode(_))
    ));
}

#[test]
fn a_stream_cut_inside_a_frame_is_reported_at_the_end() {
    let stream = encode_frame(&ControlFrame::Ping { nonce: 9 }, 1000).unwrap();
    let mut dec = FrameDecoder::<ControlFrame>::new(1000, Limits::default());
    let mut part = &stream[..stream.len() - 1];
    assert_eq!(dec.decode(&mut part), Ok(None));
    assert!(matches!(dec.finish(), Err(WireError::Truncated { .. })));
}

#[test]
fn the_sender_refuses_a_frame_the_peer_would_refuse() {
    let f = ChunkFrame::ChunkData {
        digest: Sha256Digest([0; 32]),
        bytes: ByteBuf(vec![0; 2000]),
    };
    assert!(matches!(
        encode_frame(&f, 1000),
        Err(WireError::FrameTooLarge { .. })
    ));
}

#[test]
fn a_full_size_chunk_fits_the_default_chunk_frame_limit() {
    let limits = Limits::default();
    let f = ChunkFrame::ChunkData {
        digest: Sha256Digest([0; 32]),
        bytes: ByteBuf(vec![0; limits.max_chunk_bytes as usize]),
    };
    let stream = encode_frame(&f, limits.max_chunk_frame_bytes).unwrap();
    let mut dec = FrameDecoder::<ChunkFrame>::new(limits.max_chunk_frame_bytes, limits);
    assert_eq!(dec.decode(&mut &stream[..]), Ok(Some(f)));
}
