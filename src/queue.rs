//! Typed queue (in progress)
pub struct Queue<T>(std::marker::PhantomData<T>);
