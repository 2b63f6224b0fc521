//! # walrus-alloc
//!
//! The concurrency core of Walrus (to be filled in): the instance-scoped block allocator that
//! hands blocks of segment files to topic writers, the per-file state tracker (blocks locked,
//! checkpointed, handed out; fully allocated) and the rule that says when a segment file may be
//! deleted. It knows nothing of topics or file contents and keeps no process-global state.
