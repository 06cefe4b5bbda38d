//! Asset definitions: what an asset is called, what it reads, how it is
//! partitioned, stored and retried, and the function that computes it.
//!
//! Assets come from two places. The `#[asset]` macro turns an `async fn` into a
//! type implementing [`Asset`], whose upstream types are checked by the
//! compiler. [`AssetBuilder`] makes assets at run time (from a manifest or
//! config); their problems are found when the definitions are built.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flowstone_partitions::{PartitionMapping, PartitionsDef, PartitionsError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::AssetContext;
use crate::error::{AssetError, Result};
use crate::ids::{AssetKey, PartitionKey};
use crate::value::{AnyValue, ValueType};

/// An asset declared with `#[asset]`.
///
/// The macro implements it on a type named after the function, so
/// `Definitions::builder().asset::<raw_flights>()` adds it.
pub trait Asset {
    /// What the asset's function returns inside its `Result`.
    type Output: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The asset key.
    const KEY: &'static str;

    /// The full definition.
    fn definition() -> AssetBuilder;
}

/// A parameter type that can receive the values of an upstream asset whose
/// output is `T`: `T` itself for exactly one upstream partition,
/// [`Partitioned<T>`] for any number, `Option<T>` for at most one.
#[diagnostic::on_unimplemented(
    message = "a parameter of type `{Self}` cannot receive this upstream asset's output `{T}`",
    label = "the upstream asset produces `{T}`",
    note = "declare the parameter as `{T}` (one upstream partition), `Partitioned<{T}>` (several) \
            or `Option<{T}>` (at most one)"
)]
pub trait FromUpstream<T>: Sized {
    /// Builds the parameter from the upstream values, in partition order.
    ///
    /// # Errors
    ///
    /// When the number of values does not fit the parameter type.
    fn from_upstream(dep: &str, values: Vec<(Option<PartitionKey>, T)>) -> Result<Self>;
}

impl<T> FromUpstream<T> for T {
    fn from_upstream(dep: &str, values: Vec<(Option<PartitionKey>, T)>) -> Result<Self> {
        let count = values.len();
        let mut values = values.into_iter();
        match (values.next(), count) {
            (Some((_, value)), 1) => Ok(value),
            _ => Err(AssetError::fatal(anyhow::anyhow!(
                "input {dep} expects exactly one upstream partition but the partition mapping \
                 gave {count}; declare the parameter as Partitioned<_> to receive several"
            ))),
        }
    }
}

impl<T> FromUpstream<T> for Option<T> {
    fn from_upstream(dep: &str, values: Vec<(Option<PartitionKey>, T)>) -> Result<Self> {
        let count = values.len();
        if count > 1 {
            return Err(AssetError::fatal(anyhow::anyhow!(
                "input {dep} expects at most one upstream partition but the partition mapping \
                 gave {count}; declare the parameter as Partitioned<_> to receive several"
            )));
        }
        Ok(values.into_iter().next().map(|(_, value)| value))
    }
}

impl<T> FromUpstream<T> for Partitioned<T> {
    fn from_upstream(_dep: &str, values: Vec<(Option<PartitionKey>, T)>) -> Result<Self> {
        let values = values
            .into_iter()
            .map(|(key, value)| (key.unwrap_or_else(|| PartitionKey::from("")), value));
        Ok(Partitioned {
            values: values.collect(),
        })
    }
}

/// The values of several upstream partitions, in partition order, e.g. the 7
/// daily reports a weekly report reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Partitioned<T> {
    values: Vec<(PartitionKey, T)>,
}

impl<T> Partitioned<T> {
    pub fn new(values: Vec<(PartitionKey, T)>) -> Self {
        Partitioned { values }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PartitionKey, &T)> {
        self.values.iter().map(|(key, value)| (key, value))
    }

    pub fn keys(&self) -> impl Iterator<Item = &PartitionKey> {
        self.values.iter().map(|(key, _)| key)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.values.iter().map(|(_, value)| value)
    }

    pub fn get(&self, key: &str) -> Option<&T> {
        self.values
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, value)| value)
    }

    pub fn into_values(self) -> impl Iterator<Item = T> {
        self.values.into_iter().map(|(_, value)| value)
    }
}

impl<T> IntoIterator for Partitioned<T> {
    type Item = (PartitionKey, T);
    type IntoIter = std::vec::IntoIter<(PartitionKey, T)>;

    fn into_iter(self) -> Self::IntoIter {
        self.values.into_iter()
    }
}

/// The values loaded for one call, by dependency.
pub struct Inputs {
    slots: Vec<InputSlot>,
}

pub(crate) struct InputSlot {
    pub(crate) name: String,
    pub(crate) values: Vec<(Option<PartitionKey>, AnyValue)>,
}

impl Inputs {
    pub(crate) fn new(slots: Vec<InputSlot>) -> Self {
        Inputs { slots }
    }

    /// An empty set of inputs, for calling a compute function in a test.
    pub fn empty() -> Self {
        Inputs { slots: Vec::new() }
    }

    /// Adds one upstream value under `dep` (for tests).
    pub fn with<T: Send + Sync + 'static>(
        mut self,
        dep: &str,
        partition: Option<&str>,
        value: T,
    ) -> Self {
        let key = partition.map(|p| PartitionKey::from(p.to_owned()));
        match self.slots.iter_mut().find(|slot| slot.name == dep) {
            Some(slot) => slot.values.push((key, Box::new(value))),
            None => self.slots.push(InputSlot {
                name: dep.to_owned(),
                values: vec![(key, Box::new(value))],
            }),
        }
        self
    }

    /// Takes the values of dependency `dep`, whose upstream produces `T`, as a
    /// parameter of type `P`.
    ///
    /// # Errors
    ///
    /// When `dep` is not a dependency, was already taken, holds another type, or
    /// its count does not fit `P`.
    pub fn take<T: 'static, P: FromUpstream<T>>(&mut self, dep: &str) -> Result<P> {
        let slot = self.slots.iter_mut().find(|slot| slot.name == dep);
        let Some(slot) = slot else {
            return P::from_upstream(dep, Vec::new());
        };
        let mut values = Vec::with_capacity(slot.values.len());
        for (key, value) in std::mem::take(&mut slot.values) {
            let value = value.downcast::<T>().map_err(|_| {
                AssetError::fatal(anyhow::anyhow!(
                    "input {dep} is not of type {}",
                    std::any::type_name::<T>()
                ))
            })?;
            values.push((key, *value));
        }
        P::from_upstream(dep, values)
    }
}

/// The future an asset's compute function returns.
pub type ComputeFuture = Pin<Box<dyn Future<Output = Result<AnyValue>> + Send>>;

/// The type-erased function behind an asset.
pub trait Compute: Send + Sync + 'static {
    fn call(&self, ctx: AssetContext, inputs: Inputs) -> ComputeFuture;
}

impl<F> Compute for F
where
    F: Fn(AssetContext, Inputs) -> ComputeFuture + Send + Sync + 'static,
{
    fn call(&self, ctx: AssetContext, inputs: Inputs) -> ComputeFuture {
        self(ctx, inputs)
    }
}

/// How often and how patiently a failed step is retried.
///
/// The delay before attempt `n + 1` is `initial_delay * multiplier^(n - 1)`,
/// capped at `max_delay`, then moved by up to `jitter` (a fraction) either way.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retry.
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub multiplier: f64,
    pub max_delay: Duration,
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::none()
    }
}

impl RetryPolicy {
    /// Never retry.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            initial_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_delay: Duration::from_secs(300),
            jitter: 0.2,
        }
    }

    /// Up to `max_attempts` attempts with exponential backoff from one second.
    pub fn exponential(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            ..RetryPolicy::none()
        }
    }

    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay after failed attempt `attempt` (from 1); `unit` in [0, 1)
    /// picks the jitter.
    pub fn delay_after(&self, attempt: u32, unit: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let base = self.initial_delay.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        let capped = base.min(self.max_delay.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((capped * factor).max(0.0))
    }

    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(format!(
                "multiplier must be at least 1, got {}",
                self.multiplier
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "jitter must be between 0 and 1, got {}",
                self.jitter
            ));
        }
        Ok(())
    }
}

/// Whether `name` is 1 to 64 of ASCII letters, digits, `_`, `-` and `.`:
/// the rule for queue and token names. A `const fn`, so that `#[asset(queue
/// = "...")]` is checked when the code compiles.
pub const fn is_plain_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 64 {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.') {
            return false;
        }
        i += 1;
    }
    true
}

/// Checks a queue name: letters, digits, `_`, `-` and `.`, 1 to 64
/// characters.
///
/// # Errors
///
/// What is wrong with it and what is accepted.
pub fn check_queue_name(name: &str) -> std::result::Result<(), String> {
    if !is_plain_name(name) {
        return Err(format!(
            "bad queue name {name:?}: use 1 to 64 letters, digits, '_', '-' or '.'"
        ));
    }
    Ok(())
}

/// A partition definition, or the result of building one (whose error is
/// reported with the other definition problems).
pub trait IntoPartitions {
    fn into_partitions(self) -> std::result::Result<PartitionsDef, PartitionsError>;
}

impl IntoPartitions for PartitionsDef {
    fn into_partitions(self) -> std::result::Result<PartitionsDef, PartitionsError> {
        Ok(self)
    }
}

impl IntoPartitions for std::result::Result<PartitionsDef, PartitionsError> {
    fn into_partitions(self) -> std::result::Result<PartitionsDef, PartitionsError> {
        self
    }
}

/// One dependency of an asset.
#[derive(Clone)]
pub struct DepDef {
    /// The upstream asset.
    pub key: AssetKey,
    /// The parameter (or input name) it arrives as.
    pub name: String,
    /// Which upstream partitions a partition reads; `None` picks the default
    /// for the two partition definitions.
    pub mapping: Option<PartitionMapping>,
    /// The type the asset expects, when known; checked against the upstream's
    /// output when the definitions are built.
    pub expects: Option<ValueType>,
}

/// Where a definition was written, to name both sides of a duplicate key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin(pub String);

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A checked asset definition.
#[derive(Clone)]
pub struct AssetDef {
    pub key: AssetKey,
    pub description: Option<String>,
    pub group: Option<String>,
    pub partitions: Option<PartitionsDef>,
    pub deps: Vec<DepDef>,
    pub io_manager: String,
    /// The queue its steps wait in; queues can have cluster-wide concurrency
    /// limits ([`DefinitionsBuilder::queue_limit`](crate::DefinitionsBuilder::queue_limit))
    /// and workers can serve some queues only.
    pub queue: String,
    pub retry: RetryPolicy,
    pub code_version: String,
    pub tags: BTreeMap<String, String>,
    pub owners: Vec<String>,
    pub output: ValueType,
    pub origin: Origin,
    pub(crate) compute: Arc<dyn Compute>,
}

impl AssetDef {
    /// Calls the asset's function directly, e.g. in a test with
    /// [`AssetContext::test`] and [`Inputs::with`].
    pub async fn call(&self, ctx: AssetContext, inputs: Inputs) -> Result<AnyValue> {
        self.compute.call(ctx, inputs).await
    }
}

impl fmt::Debug for AssetDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssetDef")
            .field("key", &self.key)
            .field(
                "deps",
                &self.deps.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(),
            )
            .field(
                "partitions",
                &self.partitions.as_ref().map(|p| p.describe()),
            )
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

/// Builds an [`AssetDef`]; problems are kept and reported, all together, when
/// the definitions are built.
///
/// ```
/// use flowstone_core::asset::AssetBuilder;
///
/// let total = AssetBuilder::new("total")
///     .dep::<Vec<u32>>("numbers")
///     .compute(|_ctx, mut inputs| async move {
///         let numbers: Vec<u32> = inputs.take::<Vec<u32>, _>("numbers")?;
///         Ok(numbers.iter().sum::<u32>())
///     });
/// ```
#[must_use]
pub struct AssetBuilder {
    key: String,
    description: Option<String>,
    group: Option<String>,
    partitions: Option<std::result::Result<PartitionsDef, PartitionsError>>,
    deps: Vec<(String, String, Option<PartitionMapping>, Option<ValueType>)>,
    io_manager: Option<String>,
    queue: Option<String>,
    retry: RetryPolicy,
    code_version: Option<String>,
    tags: BTreeMap<String, String>,
    owners: Vec<String>,
    output: Option<ValueType>,
    compute: Option<Arc<dyn Compute>>,
    origin: Origin,
}

/// A reason an [`AssetBuilder`] does not make a valid asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BuildProblem {
    pub(crate) key: String,
    pub(crate) message: String,
}

impl AssetBuilder {
    /// Starts an asset named `key`, e.g. `"analytics/cleaned_events"`.
    #[track_caller]
    pub fn new(key: impl Into<String>) -> Self {
        let caller = std::panic::Location::caller();
        AssetBuilder {
            key: key.into(),
            description: None,
            group: None,
            partitions: None,
            deps: Vec::new(),
            io_manager: None,
            queue: None,
            retry: RetryPolicy::none(),
            code_version: None,
            tags: BTreeMap::new(),
            owners: Vec::new(),
            output: None,
            compute: None,
            origin: Origin(format!("{}:{}", caller.file(), caller.line())),
        }
    }

    /// Where the definition was written, shown when two definitions share a key.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Origin(origin.into());
        self
    }

    pub fn description(mut self, text: impl Into<String>) -> Self {
        let text = text.into();
        self.description = (!text.trim().is_empty()).then(|| text.trim().to_owned());
        self
    }

    /// A group for display, e.g. `"flights"`; also prefixes nothing.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Puts `prefix/` in front of the key.
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            self.key = format!("{prefix}/{}", self.key);
        }
        self
    }

    /// How the asset is partitioned. Takes a definition or the result of
    /// building one, so a bad definition is reported with the others.
    pub fn partitions(mut self, def: impl IntoPartitions) -> Self {
        self.partitions = Some(def.into_partitions());
        self
    }

    /// A dependency on `key` whose values arrive as type `T`.
    pub fn dep<T: Serialize + DeserializeOwned + Send + Sync + 'static>(
        self,
        key: impl Into<String>,
    ) -> Self {
        let key = key.into();
        self.dep_as(key.clone(), key, None, Some(ValueType::of::<T>()))
    }

    /// A dependency on `key` with an explicit partition mapping.
    pub fn dep_mapped<T: Serialize + DeserializeOwned + Send + Sync + 'static>(
        self,
        key: impl Into<String>,
        mapping: PartitionMapping,
    ) -> Self {
        let key = key.into();
        self.dep_as(key.clone(), key, Some(mapping), Some(ValueType::of::<T>()))
    }

    /// The general form: the upstream `key`, the `name` the values arrive
    /// under, the mapping and the expected type, each optional.
    pub fn dep_as(
        mut self,
        key: impl Into<String>,
        name: impl Into<String>,
        mapping: Option<PartitionMapping>,
        expects: Option<ValueType>,
    ) -> Self {
        self.deps.push((key.into(), name.into(), mapping, expects));
        self
    }

    /// The name of the I/O manager that stores the value; default `"default"`.
    pub fn io_manager(mut self, name: impl Into<String>) -> Self {
        self.io_manager = Some(name.into());
        self
    }

    /// The queue its steps wait in, e.g. `"llm"`; default `"default"`.
    /// Letters, digits, `_`, `-` and `.`, at most 64 characters.
    pub fn queue(mut self, name: impl Into<String>) -> Self {
        self.queue = Some(name.into());
        self
    }

    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The code version; when not set, the macro's hash of the function, or
    /// `"unversioned"` for a builder asset.
    pub fn code_version(mut self, version: impl Into<String>) -> Self {
        self.code_version = Some(version.into());
        self
    }

    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owners.push(owner.into());
        self
    }

    /// The function, returning a value of type `T`.
    pub fn compute<T, F, Fut>(mut self, f: F) -> Self
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: Fn(AssetContext, Inputs) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        self.output = Some(ValueType::of::<T>());
        let f = Arc::new(f);
        self.compute = Some(Arc::new(move |ctx: AssetContext, inputs: Inputs| {
            let fut = f(ctx, inputs);
            Box::pin(async move { fut.await.map(|value| Box::new(value) as AnyValue) })
                as ComputeFuture
        }));
        self
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Checks the builder on its own (not against other assets).
    pub(crate) fn build(self) -> std::result::Result<AssetDef, Vec<BuildProblem>> {
        let mut problems = Vec::new();
        let mut problem = |message: String| {
            problems.push(BuildProblem {
                key: self.key.clone(),
                message,
            });
        };
        let key = AssetKey::new(&self.key)
            .map_err(|err| problem(err.to_string()))
            .ok();
        let partitions = match self.partitions {
            Some(Ok(def)) => Some(def),
            Some(Err(err)) => {
                problem(format!("bad partitions: {err}"));
                None
            }
            None => None,
        };
        let mut deps = Vec::new();
        for (dep_key, name, mapping, expects) in self.deps {
            match AssetKey::new(&dep_key) {
                Ok(key) => deps.push(DepDef {
                    key,
                    name,
                    mapping,
                    expects,
                }),
                Err(err) => problem(format!("dependency {name}: {err}")),
            }
        }
        if let Err(message) = self.retry.check() {
            problem(format!("bad retry policy: {message}"));
        }
        if let Some(queue) = &self.queue
            && let Err(message) = check_queue_name(queue)
        {
            problem(message);
        }
        let (Some(output), Some(compute)) = (self.output, self.compute) else {
            problem("has no compute function; call .compute(...)".into());
            return Err(problems);
        };
        let Some(key) = key else {
            return Err(problems);
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(AssetDef {
            key,
            description: self.description,
            group: self.group,
            partitions,
            deps,
            io_manager: self.io_manager.unwrap_or_else(|| "default".to_owned()),
            queue: self
                .queue
                .unwrap_or_else(|| crate::store::DEFAULT_QUEUE.to_owned()),
            retry: self.retry,
            code_version: self
                .code_version
                .unwrap_or_else(|| "unversioned".to_owned()),
            tags: self.tags,
            owners: self.owners,
            output,
            origin: self.origin,
            compute,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_upstream_checks_counts() {
        let one = vec![(None, 5u32)];
        assert_eq!(
            <u32 as FromUpstream<u32>>::from_upstream("x", one).unwrap(),
            5
        );
        let two = vec![(None, 1u32), (None, 2)];
        let err = <u32 as FromUpstream<u32>>::from_upstream("x", two.clone()).unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
        let many = <Partitioned<u32> as FromUpstream<u32>>::from_upstream("x", two).unwrap();
        assert_eq!(many.values().copied().collect::<Vec<_>>(), vec![1, 2]);
        let none = <Option<u32> as FromUpstream<u32>>::from_upstream("x", vec![]).unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn backoff_grows_and_caps() {
        let policy = RetryPolicy::exponential(5)
            .jitter(0.0)
            .max_delay(Duration::from_secs(3));
        assert_eq!(policy.delay_after(1, 0.5), Duration::from_secs(1));
        assert_eq!(policy.delay_after(2, 0.5), Duration::from_secs(2));
        assert_eq!(policy.delay_after(3, 0.5), Duration::from_secs(3));
        assert_eq!(policy.delay_after(40, 0.5), Duration::from_secs(3));
        let jittered = RetryPolicy::exponential(5).jitter(0.5);
        assert_eq!(jittered.delay_after(1, 0.0), Duration::from_millis(500));
        assert_eq!(jittered.delay_after(1, 1.0), Duration::from_millis(1500));
    }

    #[test]
    fn builder_reports_every_problem() {
        let problems = AssetBuilder::new("bad key")
            .dep::<u32>("also bad")
            .retry(RetryPolicy {
                max_attempts: 0,
                ..RetryPolicy::none()
            })
            .build()
            .unwrap_err();
        let text: Vec<_> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(problems.len(), 4, "{text:?}");
        assert!(text[0].contains("invalid asset key"));
        assert!(text.iter().any(|t| t.contains("no compute function")));
    }
}
