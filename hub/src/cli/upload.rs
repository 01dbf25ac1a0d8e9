//! Resumable file upload to the hub: `POST /uploads`, then `PATCH`es of at most
//! [`UploadPolicy::chunk`] bytes, each at the offset the hub last confirmed.
//!
//! When the link breaks mid-way the uploader waits (exponential backoff), asks
//! the hub where it stands (`GET /uploads/{id}`) and continues from there, so a
//! multi-GiB model over a flaky site link never restarts from zero. Consecutive
//! failures are bounded; any confirmed progress resets the count.
//!
//! The loop is written against [`UploadLink`], not HTTP, so tests drive it with
//! an in-memory hub that drops connections on cue, and a virtual clock. It does
//! not register anything; `model register` does that with the finished ids.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use super::client::{segment, HubClient, HubError};
use super::{exit, CliError};
use crate::api::types::{CreateUpload, UploadState};

/// What the uploader needs from the hub.
pub(crate) trait UploadLink {
    /// `PATCH /api/v1/uploads/{id}` with `Upload-Offset: offset` and `bytes`.
    fn patch(&self, id: &str, offset: u64, bytes: &[u8]) -> Result<UploadState, HubError>;
    /// `GET /api/v1/uploads/{id}`.
    fn state(&self, id: &str) -> Result<UploadState, HubError>;
}

impl UploadLink for HubClient {
    fn patch(&self, id: &str, offset: u64, bytes: &[u8]) -> Result<UploadState, HubError> {
        let path = format!("/api/v1/uploads/{}", segment(id));
        let req = self
            .request("PATCH", &path)
            .set("Upload-Offset", &offset.to_string())
            .set("Content-Type", "application/octet-stream");
        let resp = self.answer(req.send_bytes(bytes))?;
        self.decode(&path, resp)
    }

    fn state(&self, id: &str) -> Result<UploadState, HubError> {
        self.get(&format!("/api/v1/uploads/{}", segment(id)), &[])
    }
}

/// How the uploader sizes requests and retries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UploadPolicy {
    /// Bytes per PATCH.
    // invariant: 1..=16 MiB (the hub's limit on one PATCH body).
    pub(crate) chunk: usize,
    /// Consecutive failures tolerated before giving up.
    pub(crate) max_failures: u32,
    /// Wait after the first failure; doubles after each further one.
    pub(crate) first_backoff: Duration,
    /// Longest wait between tries.
    pub(crate) max_backoff: Duration,
}

impl Default for UploadPolicy {
    fn default() -> Self {
        Self {
            chunk: 8 << 20,
            max_failures: 10,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl UploadPolicy {
    /// The wait after the `failures`-th consecutive failure (from 1).
    pub(crate) fn backoff(&self, failures: u32) -> Duration {
        let doubled = self
            .first_backoff
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        doubled.min(self.max_backoff)
    }
}

/// What the uploader reports while it works.
#[derive(Debug)]
pub(crate) enum UploadEvent<'a> {
    /// The hub has confirmed this many bytes.
    Progress(u64),
    /// A try failed; the uploader waits `wait`, then resumes.
    Retrying {
        /// What failed.
        error: &'a HubError,
        /// Consecutive failures so far.
        failures: u32,
        /// Of at most this many.
        max: u32,
        /// How long it waits.
        wait: Duration,
    },
}

/// Why an upload stopped.
#[derive(Debug)]
pub(crate) enum UploadError {
    /// The hub refused, or kept failing `failures` times in a row.
    Hub {
        /// The last error.
        error: HubError,
        /// Consecutive failures when it stopped (1 for a refusal).
        failures: u32,
        /// Bytes the hub had confirmed.
        offset: u64,
    },
    /// The local file could not be read, or changed size.
    Read(std::io::Error),
    /// The hub reported a state that cannot be right.
    Inconsistent(String),
}

fn check(state: &UploadState, id: &str, size: u64) -> Result<(), UploadError> {
    if state.id != id || state.size != size || state.offset > size {
        return Err(UploadError::Inconsistent(format!(
            "the hub reported upload {} at {} of {} bytes, but this is upload {id} of {size} bytes",
            state.id, state.offset, state.size
        )));
    }
    Ok(())
}

/// Sends `file` (of `start.size` bytes) into the upload `start`, from the
/// hub's offset to the end. Returns the final state (`offset == size`).
pub(crate) fn send_file<F: Read + Seek>(
    link: &impl UploadLink,
    start: UploadState,
    file: &mut F,
    policy: UploadPolicy,
    sleep: &mut dyn FnMut(Duration),
    events: &mut dyn FnMut(UploadEvent<'_>),
) -> Result<UploadState, UploadError> {
    let id = start.id.clone();
    let size = start.size;
    check(&start, &id, size)?;
    let mut last = start;
    let mut retry = Retry {
        policy,
        failures: 0,
        sleep,
        events,
    };
    let mut resync = false;
    let mut buf = vec![0u8; policy.chunk.clamp(1, 16 << 20)];

    loop {
        if resync {
            match link.state(&id) {
                Ok(s) => {
                    check(&s, &id, size)?;
                    last = s;
                    resync = false;
                }
                Err(e) if e.is_transient() => {
                    retry.fail(e, last.offset, true)?;
                    continue;
                }
                Err(error) => return Err(refused(error, last.offset)),
            }
        }
        let offset = last.offset;
        (retry.events)(UploadEvent::Progress(offset));
        if offset == size {
            return Ok(last);
        }
        let n = usize::try_from(size - offset).map_or(buf.len(), |left| left.min(buf.len()));
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut buf[..n]))
            .map_err(UploadError::Read)?;
        match link.patch(&id, offset, &buf[..n]) {
            Ok(s) => {
                check(&s, &id, size)?;
                let advanced = s.offset > offset;
                last = s;
                if advanced {
                    retry.failures = 0;
                } else {
                    // Accepted but not advanced: count it, so a confused hub
                    // cannot keep us looping.
                    let error = HubError::Decode {
                        path: format!("/api/v1/uploads/{id}"),
                        message: format!(
                            "the hub accepted {n} bytes at {offset} but did not advance"
                        ),
                    };
                    retry.fail(error, last.offset, true)?;
                }
            }
            Err(HubError::Status {
                status: 409,
                detail,
                body,
            }) => {
                // Our offset was stale (an earlier PATCH landed after all, or
                // another client wrote); the 409 carries the hub's state.
                let parsed = serde_json::from_str::<UploadState>(&body);
                let error = HubError::Status {
                    status: 409,
                    detail,
                    body: String::new(),
                };
                retry.fail(error, offset, false)?;
                match parsed {
                    Ok(s) => {
                        check(&s, &id, size)?;
                        last = s;
                    }
                    Err(_) => resync = true,
                }
            }
            Err(e) if e.is_transient() => {
                retry.fail(e, offset, true)?;
                resync = true;
            }
            Err(error) => return Err(refused(error, offset)),
        }
    }
}

fn refused(error: HubError, offset: u64) -> UploadError {
    UploadError::Hub {
        error,
        failures: 1,
        offset,
    }
}

/// The failure count and the callbacks of one upload.
struct Retry<'a> {
    policy: UploadPolicy,
    // invariant: < policy.max_failures while the upload goes on.
    failures: u32,
    sleep: &'a mut dyn FnMut(Duration),
    events: &'a mut dyn for<'e> FnMut(UploadEvent<'e>),
}

impl Retry<'_> {
    /// Counts one failure: gives up past the bound, else reports it and, if
    /// `wait`, sleeps the backoff.
    fn fail(&mut self, error: HubError, offset: u64, wait: bool) -> Result<(), UploadError> {
        self.failures += 1;
        if self.failures >= self.policy.max_failures {
            return Err(UploadError::Hub {
                error,
                failures: self.failures,
                offset,
            });
        }
        let pause = if wait {
            self.policy.backoff(self.failures)
        } else {
            Duration::ZERO
        };
        (self.events)(UploadEvent::Retrying {
            error: &error,
            failures: self.failures,
            max: self.policy.max_failures,
            wait: pause,
        });
        if wait {
            (self.sleep)(pause);
        }
        Ok(())
    }
}

/// Uploads the file at `path` as a new upload and returns its finished state;
/// shows progress and retry notices through `events`.
pub(crate) fn upload_path(
    client: &HubClient,
    path: &Path,
    events: &mut dyn FnMut(UploadEvent<'_>),
) -> Result<UploadState, CliError> {
    let input = |e: std::io::Error| CliError::input(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(input)?;
    let size = file.metadata().map_err(input)?.len();
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            CliError::input(format!(
                "{}: the file name must be valid UTF-8",
                path.display()
            ))
        })?
        .to_string();
    let start: UploadState = client
        .send("POST", "/api/v1/uploads", &CreateUpload { file_name, size })
        .map_err(|e| client.cli_error(e))?;
    send_file(
        client,
        start,
        &mut file,
        UploadPolicy::default(),
        &mut std::thread::sleep,
        events,
    )
    .map_err(|e| match e {
        UploadError::Hub {
            error,
            failures,
            offset,
        } => {
            let transient = error.is_transient();
            let mut err = client.cli_error(error);
            err.message = if transient {
                format!(
                    "upload of {} stopped at byte {offset} of {size} after {failures} failed tries: {}",
                    path.display(),
                    err.message
                )
            } else {
                format!("upload of {}: {}", path.display(), err.message)
            };
            err
        }
        UploadError::Read(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => CliError::input(
            format!("{}: the file shrank while it was uploading", path.display()),
        ),
        UploadError::Read(e) => input(e),
        UploadError::Inconsistent(m) => CliError {
            code: exit::UNAVAILABLE,
            message: format!("upload of {}: {m}", path.display()),
        },
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::io::Cursor;

    use super::*;

    /// How the in-memory hub misbehaves on one PATCH.
    #[derive(Debug, Clone, Copy)]
    enum Fault {
        /// The connection drops before any byte arrives.
        DropBefore,
        /// The hub stores this many bytes, then the connection drops.
        DropAfter(usize),
        /// The hub answers 503.
        Unavailable,
    }

    /// An upload endpoint in memory: stores bytes at the confirmed offset, and
    /// fails PATCH number `n` (from 0) as `faults` says.
    struct MemHub {
        size: u64,
        data: RefCell<Vec<u8>>,
        patches: RefCell<usize>,
        sent_bytes: RefCell<usize>,
        faults: Vec<(usize, Fault)>,
        state_fails: RefCell<u32>,
    }

    impl MemHub {
        fn new(size: u64, faults: Vec<(usize, Fault)>) -> Self {
            Self {
                size,
                data: RefCell::new(Vec::new()),
                patches: RefCell::new(0),
                sent_bytes: RefCell::new(0),
                faults,
                state_fails: RefCell::new(0),
            }
        }

        fn view(&self) -> UploadState {
            UploadState {
                id: "u1".into(),
                file_name: "m.onnx".into(),
                offset: self.data.borrow().len() as u64,
                size: self.size,
            }
        }
    }

    fn dropped() -> HubError {
        HubError::Transport {
            message: "connection reset".into(),
        }
    }

    impl UploadLink for MemHub {
        fn patch(&self, _id: &str, offset: u64, bytes: &[u8]) -> Result<UploadState, HubError> {
            let n = {
                let mut p = self.patches.borrow_mut();
                *p += 1;
                *p - 1
            };
            *self.sent_bytes.borrow_mut() += bytes.len();
            if offset != self.data.borrow().len() as u64 {
                return Err(HubError::Status {
                    status: 409,
                    detail: "offset mismatch".into(),
                    body: serde_json::to_string(&self.view()).unwrap(),
                });
            }
            match self.faults.iter().find(|(at, _)| *at == n).map(|(_, f)| *f) {
                Some(Fault::DropBefore) => Err(dropped()),
                Some(Fault::DropAfter(k)) => {
                    self.data
                        .borrow_mut()
                        .extend_from_slice(&bytes[..k.min(bytes.len())]);
                    Err(dropped())
                }
                Some(Fault::Unavailable) => Err(HubError::Status {
                    status: 503,
                    detail: "busy".into(),
                    body: String::new(),
                }),
                None => {
                    self.data.borrow_mut().extend_from_slice(bytes);
                    Ok(self.view())
                }
            }
        }

        fn state(&self, _id: &str) -> Result<UploadState, HubError> {
            let mut fails = self.state_fails.borrow_mut();
            if *fails > 0 {
                *fails -= 1;
                return Err(dropped());
            }
            Ok(self.view())
        }
    }

    fn file(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn policy() -> UploadPolicy {
        UploadPolicy {
            chunk: 100,
            ..UploadPolicy::default()
        }
    }

    fn run(hub: &MemHub, bytes: &[u8]) -> (Result<UploadState, UploadError>, Vec<Duration>) {
        let mut slept = Vec::new();
        let r = send_file(
            hub,
            hub.view(),
            &mut Cursor::new(bytes.to_vec()),
            policy(),
            &mut |d| slept.push(d),
            &mut |_| {},
        );
        (r, slept)
    }

    #[test]
    fn clean_upload_sends_every_byte_once() {
        let bytes = file(1050);
        let hub = MemHub::new(1050, vec![]);
        let (r, slept) = run(&hub, &bytes);
        assert_eq!(r.unwrap().offset, 1050);
        assert_eq!(*hub.data.borrow(), bytes);
        assert_eq!(*hub.sent_bytes.borrow(), 1050);
        assert_eq!(*hub.patches.borrow(), 11);
        assert!(slept.is_empty());
    }

    #[test]
    fn upload_cut_mid_chunk_resumes_from_the_hubs_offset_not_from_zero() {
        let bytes = file(1000);
        // PATCH 5 (bytes 500..600) lands 37 bytes, then the link drops.
        let hub = MemHub::new(1000, vec![(5, Fault::DropAfter(37))]);
        let (r, slept) = run(&hub, &bytes);
        assert_eq!(r.unwrap().offset, 1000);
        assert_eq!(*hub.data.borrow(), bytes);
        // Only the 63 bytes of the broken request that never landed went twice.
        assert_eq!(*hub.sent_bytes.borrow(), 1000 + 63);
        assert_eq!(slept.len(), 1);
    }

    #[test]
    fn chunk_that_landed_before_the_answer_was_lost_is_not_sent_twice() {
        let bytes = file(300);
        let hub = MemHub::new(300, vec![(1, Fault::DropAfter(100))]);
        let (r, _) = run(&hub, &bytes);
        assert_eq!(r.unwrap().offset, 300);
        assert_eq!(*hub.data.borrow(), bytes);
        assert_eq!(*hub.patches.borrow(), 3);
    }

    #[test]
    fn stale_offset_conflict_adopts_the_hubs_state_without_waiting() {
        let bytes = file(300);
        let hub = MemHub::new(300, vec![]);
        hub.data.borrow_mut().extend_from_slice(&bytes[..150]);
        // Start from a stale view claiming offset 0.
        let mut stale = hub.view();
        stale.offset = 0;
        let mut slept = Vec::new();
        let r = send_file(
            &hub,
            stale,
            &mut Cursor::new(bytes.clone()),
            policy(),
            &mut |d| slept.push(d),
            &mut |_| {},
        );
        assert_eq!(r.unwrap().offset, 300);
        assert_eq!(*hub.data.borrow(), bytes);
        assert!(slept.is_empty());
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = UploadPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(500));
        assert_eq!(p.backoff(2), Duration::from_secs(1));
        assert_eq!(p.backoff(4), Duration::from_secs(4));
        assert_eq!(p.backoff(9), Duration::from_secs(30));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn flaky_link_with_progress_between_failures_still_finishes() {
        let bytes = file(1000);
        // Every other PATCH fails one way or another; progress resets the count.
        let faults = (0..30)
            .step_by(2)
            .map(|i| {
                let f = match i % 3 {
                    0 => Fault::DropBefore,
                    1 => Fault::Unavailable,
                    _ => Fault::DropAfter(10),
                };
                (i, f)
            })
            .collect();
        let hub = MemHub::new(1000, faults);
        let (r, _) = run(&hub, &bytes);
        assert_eq!(r.unwrap().offset, 1000);
        assert_eq!(*hub.data.borrow(), bytes);
    }

    #[test]
    fn dead_link_gives_up_after_the_bound_with_the_offset_reached() {
        let bytes = file(500);
        let faults = (2..100).map(|i| (i, Fault::DropBefore)).collect();
        let hub = MemHub::new(500, faults);
        let (r, slept) = run(&hub, &bytes);
        match r {
            Err(UploadError::Hub {
                failures, offset, ..
            }) => {
                assert_eq!(failures, 10);
                assert_eq!(offset, 200);
            }
            other => panic!("expected to give up, got {other:?}"),
        }
        assert_eq!(slept.len(), 9);
    }

    #[test]
    fn failing_state_queries_count_as_failures_and_are_retried() {
        let bytes = file(300);
        let hub = MemHub::new(300, vec![(1, Fault::DropBefore)]);
        *hub.state_fails.borrow_mut() = 3;
        let (r, slept) = run(&hub, &bytes);
        assert_eq!(r.unwrap().offset, 300);
        assert_eq!(slept.len(), 4);
    }

    #[test]
    fn refusal_stops_at_once() {
        struct Refuses;
        impl UploadLink for Refuses {
            fn patch(&self, _: &str, _: u64, _: &[u8]) -> Result<UploadState, HubError> {
                Err(HubError::Status {
                    status: 403,
                    detail: "viewer".into(),
                    body: String::new(),
                })
            }
            fn state(&self, _: &str) -> Result<UploadState, HubError> {
                unreachable!()
            }
        }
        let start = UploadState {
            id: "u1".into(),
            file_name: "m".into(),
            offset: 0,
            size: 10,
        };
        let r = send_file(
            &Refuses,
            start,
            &mut Cursor::new(vec![0; 10]),
            policy(),
            &mut |_| panic!("no sleeping"),
            &mut |_| {},
        );
        assert!(matches!(r, Err(UploadError::Hub { failures: 1, .. })));
    }

    #[test]
    fn hub_reporting_another_size_is_inconsistent() {
        let hub = MemHub::new(10, vec![]);
        let mut start = hub.view();
        start.size = 11;
        let r = send_file(
            &hub,
            start,
            &mut Cursor::new(vec![0; 11]),
            policy(),
            &mut |_| {},
            &mut |_| {},
        );
        assert!(matches!(r, Err(UploadError::Inconsistent(_))));
    }
}
