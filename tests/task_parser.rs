//! Property tests for the `<loc>`/`<seg>` output parser and the task prompts.

use paligemma::task::{
    BoundingBox, Coordinates, Detection, ParseOutput, Task, detection_suffix, format_objects,
    loc_token, parse_objects_with, seg_token,
};
use proptest::prelude::*;

/// Fragments PaliGemma outputs are made of, valid and not.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0u16..1100).prop_map(loc_token),
        2 => (0u16..140).prop_map(seg_token),
        2 => "[a-z ]{0,6}",
        1 => "\\PC{0,4}",
        1 => "[ \t\r\n]{1,2}",
        1 => Just(" ; ".to_string()),
        1 => Just(";".to_string()),
        1 => Just("猫 ".to_string()),
        1 => (0u32..100_000).prop_map(|v| format!("<loc{v}>")),
        1 => (0u32..10_000).prop_map(|v| format!("<seg{v}>")),
        1 => prop::sample::select(vec![
            "<loc", "<loc1", "<seg", "<seg12", "<", ">", "<eos>", "<pad>", "<bos>", "<eos",
            "<image>", "<loc>", "<seg>",
        ])
        .prop_map(str::to_string),
    ]
}

/// A whole object, usually valid: four locs (in order most of the time), sometimes
/// sixteen segs, a label.
fn object() -> impl Strategy<Value = String> {
    (
        prop::array::uniform4(0u16..1024),
        any::<bool>(),
        proptest::option::of(prop::array::uniform16(0u16..128)),
        "[a-z猫][a-z 猫-]{0,8}",
    )
        .prop_map(|(mut loc, sort, codes, label)| {
            if sort {
                loc = [
                    loc[0].min(loc[2]),
                    loc[1].min(loc[3]),
                    loc[0].max(loc[2]),
                    loc[1].max(loc[3]),
                ];
            }
            let mut s: String = loc.iter().map(|&v| loc_token(v)).collect();
            s.extend(codes.iter().flatten().map(|&v| seg_token(v)));
            s + " " + &label
        })
}

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![4 => fragment(), 1 => object()], 0..40)
        .prop_map(|parts| parts.concat())
}

fn dims() -> impl Strategy<Value = (u32, u32)> {
    prop_oneof![
        (1u32..5000, 1u32..5000),
        (0u32..3, 0u32..3),
        Just((u32::MAX, 1)),
        Just((224, 224)),
    ]
}

/// Everything the parser promises about one output.
fn check(text: &str, w: u32, h: u32, seg: bool) -> Result<(), TestCaseError> {
    let out = parse_objects_with(text, w, h, seg, Coordinates::BigVision);
    let demo = parse_objects_with(text, w, h, seg, Coordinates::Demo);

    // Never invents objects: each one needs four `<loc` in the text.
    prop_assert!(out.objects.len() * 4 <= text.matches("<loc").count());
    for o in &out.objects {
        let b = o.bbox;
        let (wf, hf) = (f64::from(w), f64::from(h));
        if w > 0 {
            prop_assert!(
                0.0 <= b.x_min && b.x_min < b.x_max && b.x_max <= wf,
                "{b:?}"
            );
        } else {
            prop_assert!(b.x_min == 0.0 && b.x_max == 0.0, "{b:?}");
        }
        if h > 0 {
            prop_assert!(
                0.0 <= b.y_min && b.y_min < b.y_max && b.y_max <= hf,
                "{b:?}"
            );
        } else {
            prop_assert!(b.y_min == 0.0 && b.y_max == 0.0, "{b:?}");
        }
        prop_assert!(o.loc.iter().all(|&v| v <= 1023));
        prop_assert!(o.loc[2] > o.loc[0] && o.loc[3] > o.loc[1]);
        prop_assert!(!o.label.is_empty() && o.label.trim() == o.label);
        prop_assert!(!o.label.contains([';', '\n']));
        prop_assert!(text.contains(&o.label));
        if seg {
            prop_assert!(o.seg_codes.is_some());
        }
        if let Some(codes) = o.seg_codes {
            prop_assert!(codes.iter().all(|&v| v <= 127));
        }
    }
    for s in &out.skipped {
        prop_assert!(!s.text.is_empty() && s.text.trim() == s.text);
        prop_assert!(text.contains(&s.text), "{s:?}");
        prop_assert!(!s.reason.to_string().is_empty());
    }

    // The coordinate convention changes the boxes only, and /1024 is never larger.
    prop_assert_eq!(&out.skipped, &demo.skipped);
    prop_assert_eq!(out.objects.len(), demo.objects.len());
    for (a, b) in out.objects.iter().zip(&demo.objects) {
        prop_assert_eq!(
            (&a.label, a.loc, a.seg_codes),
            (&b.label, b.loc, b.seg_codes)
        );
        prop_assert!(b.bbox.x_min <= a.bbox.x_min && b.bbox.y_max <= a.bbox.y_max);
    }

    // Formatting what was parsed and parsing it again is the identity.
    let again = parse_objects_with(
        &format_objects(&out.objects),
        w,
        h,
        seg,
        Coordinates::BigVision,
    );
    prop_assert_eq!(&again.objects, &out.objects);
    prop_assert!(again.skipped.is_empty(), "{:?}", again.skipped);
    Ok(())
}

fn concat(a: ParseOutput, b: ParseOutput) -> ParseOutput {
    ParseOutput {
        objects: a.objects.into_iter().chain(b.objects).collect(),
        skipped: a.skipped.into_iter().chain(b.skipped).collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text(text in any::<String>(), (w, h) in dims(), seg: bool) {
        check(&text, w, h, seg)?;
    }

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300), (w, h) in dims(), seg: bool) {
        check(&String::from_utf8_lossy(&bytes), w, h, seg)?;
    }

    #[test]
    fn token_soup(text in soup(), (w, h) in dims(), seg: bool) {
        check(&text, w, h, seg)?;
    }

    #[test]
    fn separator_splits_independently(a in soup(), b in soup(), seg: bool) {
        let whole = parse_objects_with(&format!("{a} ; {b}"), 640, 480, seg, Coordinates::BigVision);
        let parts = concat(
            parse_objects_with(&a, 640, 480, seg, Coordinates::BigVision),
            parse_objects_with(&b, 640, 480, seg, Coordinates::BigVision),
        );
        prop_assert_eq!(whole, parts);
    }

    /// Pixel boxes written as a detection target parse back to within one `<loc>` step.
    #[test]
    fn detection_targets_round_trip(
        boxes in prop::collection::vec((0.0f64..1.0, 0.0f64..1.0, 0.05f64..1.0, 0.05f64..1.0), 1..4),
        w in 20u32..3000,
        h in 20u32..3000,
    ) {
        let objects: Vec<(String, BoundingBox)> = boxes
            .iter()
            .enumerate()
            .map(|(i, &(x, y, bw, bh))| {
                let (fw, fh) = (f64::from(w), f64::from(h));
                let x_min = x * fw * 0.9;
                let y_min = y * fh * 0.9;
                let b = BoundingBox {
                    x_min,
                    y_min,
                    x_max: (x_min + bw * fw * 0.5 + fw / 100.0).min(fw),
                    y_max: (y_min + bh * fh * 0.5 + fh / 100.0).min(fh),
                };
                (format!("thing {i}"), b)
            })
            .collect();
        let suffix = detection_suffix(&objects, w, h).map_err(TestCaseError::fail)?;
        let parsed = parse_objects_with(&suffix, w, h, false, Coordinates::BigVision);
        prop_assert!(parsed.skipped.is_empty(), "{:?}", parsed.skipped);
        prop_assert_eq!(parsed.objects.len(), objects.len());
        for ((label, b), o) in objects.iter().zip(&parsed.objects) {
            prop_assert_eq!(&o.label, label);
            let (sx, sy) = (f64::from(w) / 1023.0, f64::from(h) / 1023.0);
            for (a, c, step) in [(b.x_min, o.bbox.x_min, sx), (b.x_max, o.bbox.x_max, sx),
                                 (b.y_min, o.bbox.y_min, sy), (b.y_max, o.bbox.y_max, sy)] {
                prop_assert!((a - c).abs() <= step * 0.5 + 1e-6, "{} vs {}", a, c);
            }
        }
    }

    #[test]
    fn formatted_objects_round_trip(
        objs in prop::collection::vec(
            (
                0u16..1023,
                0u16..1023,
                1u16..1024,
                1u16..1024,
                "[a-zA-Z猫ü][a-zA-Z 猫ü<>-]{0,12}[a-z猫]",
                proptest::option::of(prop::array::uniform16(0u16..128)),
            ),
            0..6,
        ),
        seg: bool,
        separator in prop::sample::select(vec![" ; ", "", "\n", " ;", "<eos>"]),
        (w, h) in (1u32..4000, 1u32..4000),
    ) {
        let objects: Vec<Detection> = objs
            .into_iter()
            .filter_map(|(y0, x0, dy, dx, label, codes)| {
                let (y1, x1) = ((y0 + dy).min(1023), (x0 + dx).min(1023));
                let codes = if seg { Some(codes.unwrap_or([0; 16])) } else { codes };
                (y1 > y0 && x1 > x0).then_some(Detection {
                    label,
                    bbox: BoundingBox { x_min: 0.0, y_min: 0.0, x_max: 0.0, y_max: 0.0 },
                    loc: [y0, x0, y1, x1],
                    seg_codes: codes,
                })
            })
            .collect();
        // The canonical format, and the variants PaliGemma produces.
        let canonical = format_objects(&objects);
        let variant = objects
            .iter()
            .map(|o| format_objects(std::slice::from_ref(o)))
            .collect::<Vec<_>>()
            .join(separator);
        for text in [canonical, variant] {
            let out = parse_objects_with(&text, w, h, seg, Coordinates::BigVision);
            prop_assert!(out.skipped.is_empty(), "{:?} in {text:?}", out.skipped);
            prop_assert_eq!(out.objects.len(), objects.len());
            for (a, b) in out.objects.iter().zip(&objects) {
                prop_assert_eq!((&a.label, a.loc, a.seg_codes), (&b.label, b.loc, b.seg_codes));
                let x_min = f64::from(b.loc[1]) / 1023.0 * f64::from(w);
                let y_max = f64::from(b.loc[2]) / 1023.0 * f64::from(h);
                prop_assert!((a.bbox.x_min - x_min).abs() <= 1e-3 * x_min.max(1.0));
                prop_assert!((a.bbox.y_max - y_max).abs() <= 1e-3 * y_max.max(1.0));
            }
        }
    }

    #[test]
    fn prompts_never_panic(
        objects in prop::collection::vec("\\PC{0,12}|[a-z ;<>\n]{0,8}", 0..4),
        lang in "\\PC{0,6}|[a-z]{2,3}(-[A-Za-z0-9]{2,4})?",
        q in "\\PC{0,30}|.{0,10}<(image|eos|loc0001|seg12)>.{0,5}",
    ) {
        for task in [
            Task::detect(&objects),
            Task::segment(&objects),
            Task::caption(&lang),
            Task::describe(&lang),
            Task::answer(&lang, &q),
            Task::question(&lang, &q),
        ] {
            match task.prompt() {
                Ok(p) => {
                    prop_assert!(!p.contains(['\n', '\r']));
                    prop_assert!(!p.contains("<image>") && !p.contains("<eos>"));
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
        // A valid object list is the trimmed names joined by " ; ".
        if let Ok(p) = Task::detect(&objects).prompt() {
            let names: Vec<&str> = objects.iter().map(|o| o.trim()).collect();
            prop_assert_eq!(p, format!("detect {}", names.join(" ; ")));
        }
    }
}
