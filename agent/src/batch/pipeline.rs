//! Rows to requests and results back: the reading thread groups rows into
//! batches and hands them to `concurrency` worker threads, each calling the
//! agent; results come back in any order and are written in input order.
//!
//! Design: batches read but not yet written (in flight, or done and waiting for
//! an earlier one) are at most `concurrency`, so at most
//! `concurrency * batch_rows` rows are in memory whatever the file's size. The
//! first failed request stops reading; batches already sent finish (or give up
//! at their next retry), and every batch before the failed one is written, so
//! the output stays resumable.
//!
//! It does not open files or print (the caller does).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Mutex, PoisonError};

use serde_json::Number;

use super::client::{AgentClient, ModelInput, Reply};
use super::output::{Outcome, OutputFile, OutputLine};
use super::rows::{Row, RowProblem, RowReader, RowWidth};
use super::{BatchError, Observer, Summary};

/// One run over the rows left in a reader.
#[derive(Debug)]
pub(crate) struct Run<'a> {
    pub(crate) client: &'a AgentClient,
    pub(crate) model: &'a ModelInput,
    /// The input file as messages name it.
    pub(crate) file_name: String,
    /// Rows per request (at least 1).
    pub(crate) batch_rows: usize,
    /// Requests in flight (at least 1).
    pub(crate) concurrency: usize,
    /// The width rows must have, as the rows skipped on resuming left it.
    pub(crate) width: RowWidth,
}

/// Rows sent to a worker.
struct Job {
    seq: u64,
    rows: Vec<Row>,
}

/// What came of one batch.
enum Done {
    /// Its lines, in row order.
    Lines(Vec<OutputLine>),
    /// Its request failed for good.
    Failed(BatchError),
}

impl Run<'_> {
    /// Scores every row left in `reader` into `out`, counting in `summary`.
    ///
    /// # Errors
    ///
    /// The first request that failed for good, an input read error, or an
    /// output write error; every batch before it is written.
    pub(crate) fn score(
        &self,
        reader: &mut RowReader,
        out: &mut OutputFile,
        summary: &mut Summary,
        observer: &mut dyn Observer,
    ) -> Result<(), BatchError> {
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(self.concurrency);
        let (done_tx, done_rx) = mpsc::channel::<(u64, Done)>();
        let job_rx = Mutex::new(job_rx);
        let cancel = AtomicBool::new(false);
        std::thread::scope(|s| {
            let mut started = 0;
            let mut spawn_error = None;
            for i in 0..self.concurrency {
                let done_tx = done_tx.clone();
                let (job_rx, cancel) = (&job_rx, &cancel);
                let spawned = std::thread::Builder::new()
                    .name(format!("batch-{i}"))
                    .spawn_scoped(s, move || self.work(job_rx, &done_tx, cancel));
                match spawned {
                    Ok(_) => started += 1,
                    Err(e) => spawn_error = Some(e),
                }
            }
            drop(done_tx);
            // Fewer workers than asked for still finish the run, more slowly.
            if let (0, Some(e)) = (started, spawn_error) {
                return Err(BatchError::Threads(e));
            }
            let result = self.coordinate(job_tx, &done_rx, reader, out, summary, observer);
            // Workers still retrying give up at their next try.
            cancel.store(true, Ordering::Relaxed);
            result
        })
    }

    /// The reading and writing side: keeps `concurrency` batches going and
    /// writes them in order. Dropping `jobs` on return lets the workers end.
    fn coordinate(
        &self,
        jobs: SyncSender<Job>,
        done: &Receiver<(u64, Done)>,
        reader: &mut RowReader,
        out: &mut OutputFile,
        summary: &mut Summary,
        observer: &mut dyn Observer,
    ) -> Result<(), BatchError> {
        let mut width = self.width.clone();
        let mut ready: BTreeMap<u64, Done> = BTreeMap::new();
        let (mut next_seq, mut next_write) = (0u64, 0u64);
        // invariant: outstanding == next_seq - next_write (read, not yet written).
        let mut outstanding = 0usize;
        let mut eof = false;
        // The first failure in input order wins; a read error comes after
        // every batch already read.
        let mut failure: Option<BatchError> = None;
        let mut read_error: Option<BatchError> = None;
        let mut stopping = false;
        loop {
            while !stopping && !eof && outstanding < self.concurrency {
                match self.read_batch(reader, &mut width) {
                    Ok(rows) if rows.is_empty() => eof = true,
                    Ok(rows) => {
                        let seq = next_seq;
                        next_seq += 1;
                        outstanding += 1;
                        if rows.iter().all(|r| r.cells.is_err()) {
                            ready.insert(seq, Done::Lines(self.lines(rows, Vec::new())));
                        } else if jobs.send(Job { seq, rows }).is_err() {
                            // Every worker is gone; nothing more can be scored.
                            ready.insert(seq, Done::Failed(BatchError::Cancelled));
                        }
                        observer.read_up_to(reader.position());
                    }
                    Err(e) => {
                        read_error = Some(e);
                        stopping = true;
                    }
                }
            }
            while let Some(batch) = ready.remove(&next_write) {
                next_write += 1;
                outstanding -= 1;
                match batch {
                    Done::Lines(lines) if failure.is_none() => {
                        for line in &lines {
                            out.write(line)?;
                            match &line.outcome {
                                Outcome::Scored(_) => summary.add_scored(),
                                Outcome::Rejected { reason, .. } => summary.add_rejected(reason),
                            }
                        }
                        out.flush()?;
                    }
                    Done::Lines(_) => {}
                    Done::Failed(e) => {
                        stopping = true;
                        if failure.is_none() || matches!(failure, Some(BatchError::Cancelled)) {
                            failure = Some(e);
                        }
                    }
                }
            }
            if outstanding == 0 && (eof || stopping) {
                break;
            }
            if !stopping && !eof && outstanding < self.concurrency {
                // Room again: read more before waiting. (Otherwise the head
                // batch is in flight, so a result will come.)
                continue;
            }
            match done.recv() {
                Ok((seq, batch)) => {
                    if matches!(batch, Done::Failed(_)) {
                        // Stop reading now, not only once this batch is next.
                        stopping = true;
                    }
                    ready.insert(seq, batch);
                }
                Err(_) => return Err(failure.unwrap_or(BatchError::Cancelled)),
            }
        }
        match (failure, read_error) {
            (Some(e), _) | (None, Some(e)) => Err(e),
            (None, None) => Ok(()),
        }
    }

    /// Up to `batch_rows` rows; empty at the end of the input.
    fn read_batch(
        &self,
        reader: &mut RowReader,
        width: &mut RowWidth,
    ) -> Result<Vec<Row>, BatchError> {
        let mut rows = Vec::with_capacity(self.batch_rows.min(1024));
        while rows.len() < self.batch_rows {
            let Some(row) = super::next_row(reader, width)? else {
                break;
            };
            rows.push(row);
        }
        Ok(rows)
    }

    /// A worker: scores jobs until the job channel closes.
    fn work(&self, jobs: &Mutex<Receiver<Job>>, done: &Sender<(u64, Done)>, cancel: &AtomicBool) {
        loop {
            let job = {
                let rx = jobs.lock().unwrap_or_else(PoisonError::into_inner);
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            };
            let seq = job.seq;
            let result = self.score_batch(job.rows, cancel);
            if result.is_err() {
                cancel.store(true, Ordering::Relaxed);
            }
            let batch = match result {
                Ok(lines) => Done::Lines(lines),
                Err(e) => Done::Failed(e),
            };
            if done.send((seq, batch)).is_err() {
                return;
            }
        }
    }

    /// Scores the good rows of a batch in one request; if the agent rejects
    /// it, row by row, so only the rows it rejects on their own fail.
    fn score_batch(
        &self,
        rows: Vec<Row>,
        cancel: &AtomicBool,
    ) -> Result<Vec<OutputLine>, BatchError> {
        let good: Vec<&[Number]> = rows
            .iter()
            .filter_map(|r| r.cells.as_ref().ok().map(Vec::as_slice))
            .collect();
        let scored = match self.client.infer(self.model, &good, cancel)? {
            Reply::Scored(outputs) => outputs.into_iter().map(Ok).collect(),
            Reply::Rejected(message) if good.len() == 1 => vec![Err(message)],
            Reply::Rejected(_) => {
                let mut each = Vec::with_capacity(good.len());
                for row in &good {
                    each.push(match self.client.infer(self.model, &[*row], cancel)? {
                        Reply::Scored(mut outputs) => outputs.pop().ok_or_else(|| {
                            // split_rows gives one entry per row sent.
                            "the agent answered no rows".to_owned()
                        }),
                        Reply::Rejected(message) => Err(message),
                    });
                }
                each
            }
        };
        Ok(self.lines(rows, scored))
    }

    /// Output lines for `rows`, the good ones taking `scored` in order.
    fn lines(
        &self,
        rows: Vec<Row>,
        scored: Vec<Result<super::client::RowOutputs, String>>,
    ) -> Vec<OutputLine> {
        let mut scored = scored.into_iter();
        rows.into_iter()
            .map(|row| {
                let problem = match row.cells {
                    Ok(_) => match scored.next() {
                        Some(Ok(outputs)) => {
                            return OutputLine {
                                row: row.index,
                                id: row.id,
                                outcome: Outcome::Scored(outputs),
                            }
                        }
                        Some(Err(message)) => RowProblem::Rejected(message),
                        None => RowProblem::Rejected("the agent answered no outputs".to_owned()),
                    },
                    Err(problem) => problem,
                };
                OutputLine {
                    row: row.index,
                    id: row.id,
                    outcome: Outcome::Rejected {
                        message: format!("{} line {}: {problem}", self.file_name, row.line),
                        reason: problem.reason(),
                    },
                }
            })
            .collect()
    }
}
