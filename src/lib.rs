pub mod event;
pub mod store;
pub mod upcast;
pub mod checkpoint;
pub mod error;
pub mod migrate;
pub mod generate;
pub mod import;
