//! Jobs and the bounded FIFO queue they wait in. A job is accepted once, taken by one worker
//! once, and ends in exactly one of done, failed (with its message) or cancelled; its state is
//! a `watch` channel, so any number of waiters (a synchronous request, an event stream, a
//! poll) see every change that matters — the latest state is never lost.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::watch;

use crate::spec::Spec;

/// Where a job is.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    /// Waiting; `position` jobs are ahead of it (0: next).
    Queued {
        position: usize,
    },
    /// A worker runs it; `step` solver steps of `steps` are done.
    Running {
        step: usize,
        steps: usize,
    },
    Done {
        #[serde(skip)]
        images: Arc<Vec<Image>>,
    },
    Failed {
        message: String,
    },
    Cancelled {
        reason: String,
    },
}

impl JobState {
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            JobState::Done { .. } | JobState::Failed { .. } | JobState::Cancelled { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            JobState::Queued { .. } => "queued",
            JobState::Running { .. } => "running",
            JobState::Done { .. } => "done",
            JobState::Failed { .. } => "failed",
            JobState::Cancelled { .. } => "cancelled",
        }
    }
}

/// One finished image: its PNG (with the `parameters` chunk) and that text.
#[derive(Debug, PartialEq)]
pub struct Image {
    pub png: Vec<u8>,
    pub parameters: String,
    pub seed: u64,
}

/// An accepted request.
pub struct Job {
    pub id: String,
    /// Acceptance order (also in the id).
    seq: u64,
    pub spec: Spec,
    /// Unix seconds when it was accepted.
    pub created: u64,
    cancel: AtomicBool,
    state: watch::Sender<JobState>,
    /// When a worker took it.
    started: std::sync::OnceLock<std::time::Instant>,
}

impl Job {
    /// Seconds since a worker took it (`None` while queued).
    pub fn running_for(&self) -> Option<f64> {
        self.started.get().map(|t| t.elapsed().as_secs_f64())
    }

    pub(crate) fn mark_started(&self) {
        let _ = self.started.set(std::time::Instant::now());
    }

    pub fn state(&self) -> JobState {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<JobState> {
        self.state.subscribe()
    }

    /// Asks the job to stop: a queued job is cancelled when a worker reaches it, a running one
    /// between two solver steps. False when it had already finished.
    pub fn cancel(&self) -> bool {
        self.cancel.store(true, Ordering::SeqCst);
        !self.state.borrow().is_finished()
    }

    pub fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Moves the job on; a finished job never changes again (so no job ends twice).
    pub(crate) fn set(&self, next: JobState) -> bool {
        self.state.send_if_modified(|s| {
            if s.is_finished() {
                return false;
            }
            *s = next;
            true
        })
    }
}

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the queue is full ({capacity} jobs waiting); retry later")]
    Full { capacity: usize },
    #[error("the server is shutting down")]
    Closed,
}

/// The bounded FIFO of waiting jobs, and every job by id.
pub struct Queue {
    capacity: usize,
    waiting: Mutex<Waiting>,
    ready: Condvar,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    next_id: AtomicU64,
}

struct Waiting {
    jobs: VecDeque<Arc<Job>>,
    closed: bool,
}

impl Waiting {
    /// Tells the jobs from index `from` on their new places after one ahead of them left.
    fn renumber(&self, from: usize) {
        for (position, job) in self.jobs.iter().enumerate().skip(from) {
            job.set(JobState::Queued { position });
        }
    }
}

/// Finished jobs kept for `GET /v1/jobs/{id}`; older ones are forgotten first.
const KEEP_FINISHED: usize = 256;

impl Queue {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            waiting: Mutex::new(Waiting {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            jobs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Accepts `spec` at the back of the queue, or refuses it when `capacity` jobs wait.
    pub fn submit(&self, spec: Spec) -> Result<Arc<Job>, Refused> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.closed {
            return Err(Refused::Closed);
        }
        if waiting.jobs.len() >= self.capacity {
            return Err(Refused::Full {
                capacity: self.capacity,
            });
        }
        let n = self.next_id.fetch_add(1, Ordering::SeqCst);
        let id = format!("job-{n}-{:08x}", rand::random::<u32>());
        let (state, _) = watch::channel(JobState::Queued {
            position: waiting.jobs.len(),
        });
        let job = Arc::new(Job {
            id: id.clone(),
            seq: n,
            spec,
            created: unix_now(),
            cancel: AtomicBool::new(false),
            state,
            started: std::sync::OnceLock::new(),
        });
        waiting.jobs.push_back(job.clone());
        self.remember(job.clone());
        self.ready.notify_one();
        Ok(job)
    }

    /// The next job for a worker, waiting for one; `None` once the queue is closed and empty.
    /// The positions of the jobs behind it move up.
    pub fn next(&self) -> Option<Arc<Job>> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(job) = waiting.jobs.pop_front() {
                waiting.renumber(0);
                return Some(job);
            }
            if waiting.closed {
                return None;
            }
            waiting = self
                .ready
                .wait(waiting)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Stops accepting; the waiting jobs are cancelled with `reason` and returned.
    pub fn close(&self, reason: &str) -> Vec<Arc<Job>> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.closed = true;
        let cancelled: Vec<Arc<Job>> = waiting.jobs.drain(..).collect();
        for job in &cancelled {
            job.cancel();
            job.set(JobState::Cancelled {
                reason: reason.into(),
            });
        }
        self.ready.notify_all();
        cancelled
    }

    /// Cancels `job`: a waiting job leaves the queue and is cancelled now; a running one is
    /// asked to stop between two steps. False when it had already ended.
    pub fn cancel(&self, job: &Arc<Job>, reason: &str) -> bool {
        if !job.cancel() {
            return false;
        }
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = waiting.jobs.iter().position(|j| Arc::ptr_eq(j, job)) {
            waiting.jobs.remove(at);
            job.set(JobState::Cancelled {
                reason: reason.into(),
            });
            waiting.renumber(at);
        }
        true
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Every known job, oldest first.
    pub fn all(&self) -> Vec<Arc<Job>> {
        let mut jobs: Vec<Arc<Job>> = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        jobs.sort_by_key(|j| j.seq);
        jobs
    }

    /// Number of jobs waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .jobs
            .len()
    }

    fn remember(&self, job: Arc<Job>) {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if jobs.len() >= KEEP_FINISHED {
            let mut finished: Vec<(u64, String)> = jobs
                .values()
                .filter(|j| j.state.borrow().is_finished())
                .map(|j| (j.seq, j.id.clone()))
                .collect();
            finished.sort();
            let excess = jobs.len() + 1 - KEEP_FINISHED;
            for (_, id) in finished.into_iter().take(excess) {
                jobs.remove(&id);
            }
        }
        jobs.insert(job.id.clone(), job);
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
