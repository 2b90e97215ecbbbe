//! A built-in step's `parameters`, read key by key with their defaults; a key no step
//! reads, or a value of the wrong form, is an error naming the key.

use std::{
    collections::{BTreeMap, BTreeSet},
    str::FromStr,
};

pub struct Params<'a> {
    given: &'a BTreeMap<String, String>,
    read: BTreeSet<&'static str>,
}

impl<'a> Params<'a> {
    pub fn new(given: &'a BTreeMap<String, String>) -> Params<'a> {
        Params {
            given,
            read: BTreeSet::new(),
        }
    }

    /// `key`'s value parsed as `T`, or `default` where it is not given.
    pub fn get<T: FromStr>(
        &mut self,
        key: &'static str,
        default: T,
        expected: &str,
    ) -> Result<T, String> {
        self.read.insert(key);
        match self.given.get(key) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| {
                format!(
                    "key `parameters.{key}.string_value`: expected {expected}, found `{}`",
                    v
                )
            }),
        }
    }

    /// A comma-separated list, such as `320,480,640`.
    pub fn list<T: FromStr + Clone>(
        &mut self,
        key: &'static str,
        default: &[T],
        expected: &str,
    ) -> Result<Vec<T>, String> {
        self.read.insert(key);
        let Some(v) = self.given.get(key) else {
            return Ok(default.to_vec());
        };
        v.split(',')
            .map(|item| item.trim().parse())
            .collect::<Result<Vec<T>, _>>()
            .map_err(|_| {
                format!(
                    "key `parameters.{key}.string_value`: expected {expected}, found `{}`",
                    v
                )
            })
    }

    /// Fails on a key no `get` asked for.
    pub fn finish(self) -> Result<(), String> {
        let read = self.read;
        match self.given.keys().find(|k| !read.contains(k.as_str())) {
            None => Ok(()),
            Some(unknown) => Err(format!(
                "key `parameters.{unknown}`: not a parameter of this step; it takes {}",
                read.iter().copied().collect::<Vec<_>>().join(", ")
            )),
        }
    }
}
