//! The main job and its tools: the journey [`generator`], the HTTP [`sender`] that plays a
//! plan against any collector, the ClickHouse [`report`], and [`demo`], which wires a
//! local collector and processor to them.

pub mod demo;
pub mod generator;
pub mod report;
pub mod sender;
