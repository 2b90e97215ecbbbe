//! The worker pool: OS threads per model fed through a bounded crossbeam channel. Each
//! thread owns one engine instance; every request gets its answer through a oneshot.

use std::{
    sync::Arc,
    thread::{self, JoinHandle},
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use crate::{
    backend::{BackendError, Model},
    tensor::{Tensor, TensorData},
};

pub type JobResult = Result<Vec<Tensor>, BackendError>;

/// One request's inputs (in the model's input order) and the way back to its caller.
pub struct Job {
    pub inputs: Vec<Tensor>,
    pub reply: oneshot::Sender<JobResult>,
    pub enqueued: Instant,
}

/// Requests that run together as one engine call; their inputs share every dim but the
/// first, along which they are concatenated.
pub type Batch = Vec<Job>;

pub struct WorkerPool {
    sender: Option<Sender<Batch>>,
    threads: Vec<JoinHandle<()>>,
    capacity: usize,
}

impl WorkerPool {
    /// Starts `instances` threads named after the model. `capacity` bounds the batches
    /// waiting for a free instance: that bound is the model's admission limit, past which
    /// callers are told to retry rather than queue without end.
    pub fn start(
        label: &str,
        model: Arc<dyn Model>,
        instances: usize,
        capacity: usize,
    ) -> std::io::Result<WorkerPool> {
        let (sender, receiver) = crossbeam_channel::bounded::<Batch>(capacity);
        let threads = (0..instances)
            .map(|i| {
                let model = Arc::clone(&model);
                let receiver = receiver.clone();
                thread::Builder::new()
                    .name(format!("wharf-{label}-{i}"))
                    .spawn(move || work(model, receiver))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(WorkerPool {
            sender: Some(sender),
            threads,
            capacity,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Hands a batch to the instances without waiting; a full queue gives it back.
    pub fn try_submit(&self, batch: Batch) -> Result<(), Batch> {
        let sender = self.sender.as_ref().expect("sender lives until drop");
        sender.try_send(batch).map_err(|e| match e {
            TrySendError::Full(b) | TrySendError::Disconnected(b) => b,
        })
    }
}

impl Drop for WorkerPool {
    /// Closes the channel, lets the instances finish what is queued, and joins them.
    fn drop(&mut self) {
        self.sender.take();
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

fn work(model: Arc<dyn Model>, batches: Receiver<Batch>) {
    let mut instance = model.new_instance();
    for batch in batches {
        // A caller that has gone costs nothing more.
        let batch: Batch = batch
            .into_iter()
            .filter(|job| !job.reply.is_closed())
            .collect();
        match batch.len() {
            0 => {}
            1 => {
                let job = batch.into_iter().next().expect("one job");
                let result = instance.run(&job.inputs);
                let _ = job.reply.send(result);
            }
            _ => run_batch(instance.as_mut(), batch),
        }
    }
}

fn run_batch(instance: &mut dyn crate::backend::Instance, batch: Batch) {
    let rows: Vec<usize> = batch.iter().map(|job| job.inputs[0].shape[0]).collect();
    let inputs: Vec<Tensor> = (0..batch[0].inputs.len())
        .map(|ix| concat_rows(&batch.iter().map(|job| &job.inputs[ix]).collect::<Vec<_>>()))
        .collect();
    match instance.run(&inputs) {
        Ok(outputs) => {
            let mut per_job: Vec<Vec<Tensor>> =
                vec![Vec::with_capacity(outputs.len()); batch.len()];
            for output in outputs {
                for (slot, part) in per_job.iter_mut().zip(split_rows(output, &rows)) {
                    slot.push(part);
                }
            }
            for (job, outputs) in batch.into_iter().zip(per_job) {
                let _ = job.reply.send(Ok(outputs));
            }
        }
        Err(e) => {
            let message = e.to_string();
            for job in batch {
                let _ = job
                    .reply
                    .send(Err(BackendError::Execution(message.clone())));
            }
        }
    }
}

/// Stacks tensors that agree on every dim but the first.
pub fn concat_rows(parts: &[&Tensor]) -> Tensor {
    let first = parts[0];
    let mut shape = first.shape.clone();
    shape[0] = parts.iter().map(|t| t.shape[0]).sum();
    let data = match &first.data {
        TensorData::Fixed(_) => {
            let mut out = BytesMut::with_capacity(parts.iter().map(|t| t.byte_size()).sum());
            for t in parts {
                if let TensorData::Fixed(b) = &t.data {
                    out.extend_from_slice(b);
                }
            }
            TensorData::Fixed(out.freeze())
        }
        TensorData::Bytes(_) => TensorData::Bytes(
            parts
                .iter()
                .flat_map(|t| match &t.data {
                    TensorData::Bytes(items) => items.clone(),
                    TensorData::Fixed(_) => Vec::new(),
                })
                .collect(),
        ),
    };
    Tensor {
        name: first.name.clone(),
        datatype: first.datatype,
        shape,
        data,
    }
}

/// Cuts a batch output back into one tensor per request, `rows[i]` rows each. Fixed-size
/// data is sliced without copying.
pub fn split_rows(t: Tensor, rows: &[usize]) -> Vec<Tensor> {
    let total: usize = rows.iter().sum();
    let per_row = t.element_count().checked_div(total).unwrap_or(0);
    let mut at = 0;
    rows.iter()
        .map(|&n| {
            let mut shape = t.shape.clone();
            shape[0] = n;
            let data = match &t.data {
                TensorData::Fixed(b) => {
                    let stride = per_row * t.datatype.element_size().unwrap_or(1);
                    TensorData::Fixed(Bytes::slice(b, at * stride..(at + n) * stride))
                }
                TensorData::Bytes(items) => {
                    TensorData::Bytes(items[at * per_row..(at + n) * per_row].to_vec())
                }
            };
            at += n;
            Tensor {
                name: t.name.clone(),
                datatype: t.datatype,
                shape,
                data,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DataType;

    fn fp32(shape: Vec<usize>, values: &[f32]) -> Tensor {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor {
            name: "x".into(),
            datatype: DataType::Fp32,
            shape,
            data: TensorData::Fixed(bytes.into()),
        }
    }

    #[test]
    fn concat_then_split_gives_back_each_request() {
        let a = fp32(vec![1, 2], &[1.0, 2.0]);
        let b = fp32(vec![2, 2], &[3.0, 4.0, 5.0, 6.0]);
        let joined = concat_rows(&[&a, &b]);
        assert_eq!(joined.shape, vec![3, 2]);
        let parts = split_rows(joined, &[1, 2]);
        assert_eq!(parts, vec![a, b]);
    }

    #[test]
    fn bytes_tensors_concat_and_split() {
        let s = |items: &[&'static [u8]]| Tensor {
            name: "s".into(),
            datatype: DataType::Bytes,
            shape: vec![items.len(), 1],
            data: TensorData::Bytes(items.iter().map(|i| Bytes::from_static(i)).collect()),
        };
        let (a, b) = (s(&[b"a"]), s(&[b"bb", b"ccc"]));
        let parts = split_rows(concat_rows(&[&a, &b]), &[1, 2]);
        assert_eq!(parts, vec![a, b]);
    }
}
