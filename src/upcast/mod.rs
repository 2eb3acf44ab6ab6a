pub mod jq;
pub mod ops;
pub mod pointer;
