//! With `malloc` replaced for the whole process, the glibc tuning and trimming of
//! `touchstream_core::memory` do nothing (docs/ops.md "Memory"). Its own test binary:
//! the switch is process-wide and cannot be turned back.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use touchstream_core::memory;

#[tokio::test]
async fn a_replaced_malloc_is_neither_limited_nor_trimmed() {
    memory::malloc_replaced();
    assert!(!memory::limit_c_heap_arenas());
    // Not cancelled and due every millisecond: it would run until the timeout.
    let trimming = memory::trim_periodically(Duration::from_millis(1), CancellationToken::new());
    tokio::time::timeout(Duration::from_secs(5), trimming)
        .await
        .expect("trim_periodically returns at once when malloc is replaced");
}
