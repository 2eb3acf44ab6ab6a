pub mod checkpoint;
pub mod error;
pub mod event;
pub mod generate;
pub mod import;
pub mod migrate;
pub mod store;
pub mod upcast;
