//! The fold's size model against what states really allocate: `--memory-mb` bounds the states
//! by [`approximate_size`], so it must not fall far short of the heap they hold.
//!
//! This binary's allocator counts, per thread, the bytes it hands out and takes back; a test
//! parses a state on its own thread's count and compares.

use recast::project::fold::approximate_size;
use serde_json::{json, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn count(bytes: isize) {
    // A thread being torn down has no thread-local left; its frees are not ours to count.
    let _ = LIVE.try_with(|live| live.set(live.get() + bytes));
}

// SAFETY: every call goes to the system allocator unchanged; counting touches only a
// thread-local integer, which allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What holding `value` costs: its heap, counted while a copy is parsed, and its own slot.
fn held_bytes(value: &Value) -> usize {
    let text = value.to_string();
    let before = LIVE.with(Cell::get);
    let parsed: Value = serde_json::from_str(&text).unwrap();
    let heap = LIVE.with(Cell::get) - before;
    drop(parsed);
    heap as usize + std::mem::size_of::<Value>()
}

#[test]
fn the_size_model_is_near_what_demo_states_allocate() {
    let line = json!({"order_id": "o-1", "sku": "sku-12", "quantity": 2,
        "unit_price_cents": 1999, "discount_cents": 0, "line": 3});
    let states = [
        // order_summary's snapshot row
        json!({"revision": 12, "state": {"status": "paid", "items": 7, "paid_cents": 12345,
            "skus": ["sku-1", "sku-22", "sku-3", "sku-41"], "customer": "user-1234",
            "total_cents": 99123, "currency": "EUR", "placed_at": "2024-01-01T00:00:00Z",
            "carrier": "dhl", "address": "56 Main Street"}}),
        json!({"orders": 3, "total_cents": 12345, "last_order": "order-1234"}),
        json!({"units": 123, "lines": 45, "revenue_cents": 1234567}),
        json!({"lines": [line.clone(), line.clone(), line.clone(), line]}),
        json!("a string state"),
        json!([1, 2, 3]),
    ];
    for state in states {
        let (model, held) = (approximate_size(&state), held_bytes(&state));
        let ratio = model as f64 / held as f64;
        assert!(
            (0.8..=1.3).contains(&ratio),
            "model {model} bytes, held {held} bytes ({ratio:.2}) for {state}"
        );
    }
}

#[test]
fn very_wide_objects_are_undercounted_by_no_more_than_two_fifths() {
    let wide: Value = (0..30)
        .map(|i| (format!("field_{i}"), json!(i)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let (model, held) = (approximate_size(&wide), held_bytes(&wide));
    assert!(model * 5 >= held * 3, "model {model}, held {held}");
}
