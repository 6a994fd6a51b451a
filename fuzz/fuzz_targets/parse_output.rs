//! Arbitrary bytes through the output parser and the task prompt builder: nothing may
//! panic, and every result must keep the documented invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paligemma::task::{Coordinates, Task, format_objects, parse_objects_with};

fuzz_target!(|data: &[u8]| {
    let Some((&dims, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    // Widths and heights from 0 (degenerate) to large, square and not.
    let width = u32::from(dims & 0x0f) * 97;
    let height = u32::from(dims >> 4) * 61;
    let loc_tokens = text.matches("<loc").count();
    for segments in [false, true] {
        let big_vision = parse_objects_with(&text, width, height, segments, Coordinates::BigVision);
        let demo = parse_objects_with(&text, width, height, segments, Coordinates::Demo);
        assert!(
            big_vision.objects.len() * 4 <= loc_tokens,
            "invented an object"
        );
        assert_eq!(big_vision.skipped, demo.skipped);
        assert_eq!(big_vision.objects.len(), demo.objects.len());
        for out in [&big_vision, &demo] {
            for o in &out.objects {
                let b = o.bbox;
                if width > 0 {
                    assert!(0.0 <= b.x_min && b.x_min < b.x_max && b.x_max <= f64::from(width));
                }
                if height > 0 {
                    assert!(0.0 <= b.y_min && b.y_min < b.y_max && b.y_max <= f64::from(height));
                }
                assert!(o.loc.iter().all(|&v| v <= 1023));
                assert!(!o.label.is_empty() && o.label.trim() == o.label);
                assert!(!o.label.contains([';', '\n']) && text.contains(&o.label));
                assert!(!segments || o.seg_codes.is_some());
                assert!(o.seg_codes.is_none_or(|c| c.iter().all(|&v| v <= 127)));
            }
            for s in &out.skipped {
                assert!(!s.text.is_empty() && text.contains(&s.text));
            }
        }
        // Formatting the objects and parsing them again changes nothing.
        let again = parse_objects_with(
            &format_objects(&big_vision.objects),
            width,
            height,
            segments,
            Coordinates::BigVision,
        );
        assert_eq!(again.objects, big_vision.objects);
        assert!(again.skipped.is_empty());
    }

    let parts: Vec<&str> = text.split('|').collect();
    let first = parts.first().copied().unwrap_or("");
    let second = parts.get(1).copied().unwrap_or("");
    for task in [
        Task::detect(&parts),
        Task::segment(&parts),
        Task::caption(first),
        Task::describe(first),
        Task::answer(first, second),
        Task::question(first, second),
    ] {
        if let Ok(prompt) = task.prompt() {
            assert!(!prompt.contains(['\n', '\r']));
        }
    }
});
