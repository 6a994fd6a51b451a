//! Arbitrary bytes through the output parser and the task prompt builder: nothing may
//! panic, and every object returned must satisfy the documented invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paligemma::task::{Coordinates, Task, parse_objects_with};

fuzz_target!(|data: &[u8]| {
    let Some((&dims, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let width = 1 + u32::from(dims & 0x0f) * 97;
    let height = 1 + u32::from(dims >> 4) * 61;
    for segments in [false, true] {
        for coords in [Coordinates::BigVision, Coordinates::Demo] {
            let out = parse_objects_with(&text, width, height, segments, coords);
            for o in &out.objects {
                let b = o.bbox;
                assert!(0.0 <= b.x_min && b.x_min < b.x_max && b.x_max <= width as f32);
                assert!(0.0 <= b.y_min && b.y_min < b.y_max && b.y_max <= height as f32);
                assert!(!o.label.is_empty());
            }
        }
    }
    let parts: Vec<&str> = text.split('|').collect();
    let _ = Task::detect(&parts).prompt();
    let _ = Task::segment(&parts).prompt();
    let _ = Task::caption(parts[0]).prompt();
    let _ = Task::answer(parts[0], parts.get(1).copied().unwrap_or("")).prompt();
});
