//! Property tests for the `<loc>`/`<seg>` output parser and the task prompts.

use paligemma::task::{
    Coordinates, ParsedObject, Task, format_objects, loc_token, parse_objects_with, seg_token,
};
use proptest::prelude::*;

/// Fragments that PaliGemma outputs are made of, valid and not.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u16..1100).prop_map(loc_token),
        (0u16..140).prop_map(seg_token),
        "[a-z ]{0,6}",
        "\\PC{0,4}",
        Just(" ; ".to_string()),
        Just(";".to_string()),
        Just("<loc".to_string()),
        Just("<seg12>".to_string()),
        Just("<eos>".to_string()),
    ]
}

fn check_invariants(text: &str, w: u32, h: u32, seg: bool) {
    for coords in [Coordinates::BigVision, Coordinates::Demo] {
        let out = parse_objects_with(text, w, h, seg, coords);
        let loc_tokens = text.matches("<loc").count();
        assert!(
            out.objects.len() * 4 <= loc_tokens,
            "invented objects from {text:?}"
        );
        for o in &out.objects {
            let b = o.bbox;
            assert!(
                0.0 <= b.x_min && b.x_min < b.x_max && b.x_max <= w as f32,
                "{b:?}"
            );
            assert!(
                0.0 <= b.y_min && b.y_min < b.y_max && b.y_max <= h as f32,
                "{b:?}"
            );
            assert!(o.loc.iter().all(|&v| v <= 1023));
            assert!(!o.label.is_empty() && o.label.trim() == o.label && !o.label.contains(';'));
            if seg {
                assert!(o.seg_codes.is_some_and(|c| c.iter().all(|&v| v <= 127)));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_arbitrary_text(text in "\\PC{0,200}", w in 1u32..5000, h in 1u32..5000, seg: bool) {
        check_invariants(&text, w, h, seg);
    }

    #[test]
    fn never_panics_on_token_soup(parts in prop::collection::vec(fragment(), 0..40), w in 1u32..5000, h in 1u32..5000, seg: bool) {
        check_invariants(&parts.concat(), w, h, seg);
    }

    #[test]
    fn formatting_then_parsing_round_trips(
        objs in prop::collection::vec(
            (0u16..1023, 0u16..1023, 1u16..1024, 1u16..1024, "[a-z][a-z 猫-]{0,12}[a-z]", proptest::option::of(prop::array::uniform16(0u16..128))),
            1..5),
        seg: bool,
    ) {
        let objects: Vec<ParsedObject> = objs
            .into_iter()
            .map(|(y0, x0, dy, dx, label, codes)| {
                let (y1, x1) = ((y0 + dy).min(1023), (x0 + dx).min(1023));
                let codes = if seg { Some(codes.unwrap_or([0; 16])) } else { codes };
                (y0, x0, y1, x1, label, codes)
            })
            .filter(|(y0, x0, y1, x1, _, _)| y1 > y0 && x1 > x0)
            .map(|(y0, x0, y1, x1, label, codes)| ParsedObject {
                label,
                bbox: paligemma::task::BoundingBox { x_min: 0.0, y_min: 0.0, x_max: 0.0, y_max: 0.0 },
                loc: [y0, x0, y1, x1],
                seg_codes: codes,
            })
            .collect();
        let text = format_objects(&objects);
        let out = parse_objects_with(&text, 1023, 1023, seg, Coordinates::BigVision);
        prop_assert!(out.skipped.is_empty(), "{:?}", out.skipped);
        prop_assert_eq!(out.objects.len(), objects.len());
        for (a, b) in out.objects.iter().zip(&objects) {
            prop_assert_eq!(&a.label, &b.label);
            prop_assert_eq!(a.loc, b.loc);
            prop_assert_eq!(a.seg_codes, b.seg_codes);
            prop_assert!((a.bbox.x_min - f32::from(b.loc[1])).abs() < 1e-3);
        }
    }

    #[test]
    fn prompts_never_panic(objects in prop::collection::vec("\\PC{0,12}", 0..4), lang in "\\PC{0,6}", q in "\\PC{0,30}") {
        for task in [Task::detect(&objects), Task::segment(&objects), Task::caption(&lang), Task::answer(&lang, &q)] {
            if let Ok(p) = task.prompt() {
                prop_assert!(!p.contains('\n'));
            }
        }
    }
}
