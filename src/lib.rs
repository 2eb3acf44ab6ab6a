pub mod event;
pub mod store;
pub mod upcast;
