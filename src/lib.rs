pub mod event;
pub mod store;
pub mod upcast;
pub mod checkpoint;
