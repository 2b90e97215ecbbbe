//! One change of a model's versions at a time: loads and unloads of one model queue behind
//! each other, those of different models run at once.

use std::{
    collections::BTreeSet,
    sync::{Condvar, Mutex, PoisonError},
};

/// The models whose versions are changing: loads and unloads of one model queue behind
/// each other, those of different models run at once.
#[derive(Default)]
pub struct Serial {
    busy: Mutex<BTreeSet<String>>,
    freed: Condvar,
}

/// Held while some models' versions change; lets them go when dropped.
pub struct Held<'a> {
    serial: &'a Serial,
    names: Vec<String>,
}

impl Serial {
    pub fn lock(&self, name: &str) -> Held<'_> {
        self.lock_all([name])
    }

    /// Waits until none of `names` is changing, then takes them all at once (so that two
    /// loads of overlapping sets never wait on each other).
    pub fn lock_all<S: AsRef<str>>(&self, names: impl IntoIterator<Item = S>) -> Held<'_> {
        let names: Vec<String> = names.into_iter().map(|n| n.as_ref().to_owned()).collect();
        let busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let mut busy = self
            .freed
            .wait_while(busy, |busy| names.iter().any(|n| busy.contains(n)))
            .unwrap_or_else(PoisonError::into_inner);
        busy.extend(names.iter().cloned());
        Held {
            serial: self,
            names,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut busy = self
            .serial
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for name in &self.names {
            busy.remove(name);
        }
        self.serial.freed.notify_all();
    }
}
