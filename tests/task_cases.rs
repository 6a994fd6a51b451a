//! Unit cases for task prompts and the `<loc>`/`<seg>` output parser: every prompt
//! template and argument rule, every skip reason, and the documented examples.

use paligemma::task::{
    Coordinates, ParseOutput, SkipReason, Skipped, Task, TaskError, format_objects, loc_token,
    parse_detections, parse_objects_with, parse_segmentations, seg_token,
};

fn locs(v: [u16; 4]) -> String {
    v.iter().map(|&x| loc_token(x)).collect()
}

fn segs(f: impl Fn(u16) -> u16) -> String {
    (0..16).map(|i| seg_token(f(i))).collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-3
}

fn reasons(text: &str, segments: bool) -> Vec<SkipReason> {
    parse_objects_with(text, 10, 10, segments, Coordinates::BigVision)
        .skipped
        .into_iter()
        .map(|s| s.reason)
        .collect()
}

fn labels(out: &ParseOutput) -> Vec<&str> {
    out.objects.iter().map(|o| o.label.as_str()).collect()
}

#[test]
fn each_task_builds_its_trained_prompt() {
    let cases = [
        (Task::caption("en"), "caption en"),
        (Task::describe("de"), "describe de"),
        (Task::ocr(), "ocr"),
        (Task::Ocr, "ocr"),
        (
            Task::answer("en", "  what is on the table? "),
            "answer en what is on the table?",
        ),
        (Task::question("pt-BR", " a cat "), "question pt-BR a cat"),
        (Task::detect(&["cat"]), "detect cat"),
        (
            Task::detect(&["red car", " 猫 ", "double-decker bus"]),
            "detect red car ; 猫 ; double-decker bus",
        ),
        (Task::segment(&[" cat "]), "segment cat"),
        (Task::segment(&["cat", "dog"]), "segment cat ; dog"),
        (
            Task::Caption {
                lang: "zh-CN".into(),
            },
            "caption zh-CN",
        ),
        (Task::answer("fr", "a < b > c?"), "answer fr a < b > c?"),
    ];
    for (task, want) in cases {
        assert_eq!(task.prompt().as_deref(), Ok(want), "{task:?}");
    }
}

#[test]
fn language_codes() {
    for good in [
        "en", "de", "fil", "zh", "zh-CN", "pt-BR", "sr-Latn", "zh-Hant", "es-419",
    ] {
        assert_eq!(Task::caption(good).prompt(), Ok(format!("caption {good}")));
    }
    for bad in [
        "",
        "EN",
        "En",
        "english",
        "e",
        "en-",
        "-en",
        "en_US",
        "en-toolong",
        "en-US-x",
        " en",
        "en ",
        "ü",
        "zh-C",
        "de\n",
    ] {
        assert_eq!(
            Task::caption(bad).prompt(),
            Err(TaskError::Language(bad.to_string())),
            "{bad:?}"
        );
        assert!(matches!(
            Task::answer(bad, "why?").prompt(),
            Err(TaskError::Language(_))
        ));
    }
}

#[test]
fn invalid_arguments_are_rejected_with_reasons() {
    assert_eq!(
        Task::detect::<&str>(&[]).prompt(),
        Err(TaskError::NoObjects("detect"))
    );
    assert_eq!(
        Task::segment::<&str>(&[]).prompt(),
        Err(TaskError::NoObjects("segment"))
    );
    assert_eq!(
        Task::detect(&["cat", "  "]).prompt(),
        Err(TaskError::EmptyObject { index: 1 })
    );
    for (name, what) in [
        ("a;b", "';'"),
        ("a\nb", "newline"),
        ("a\rb", "newline"),
        ("<loc0001>", "'<'"),
        ("a > b", "'<'"),
    ] {
        match Task::segment(&[name]).prompt() {
            Err(e @ TaskError::ReservedInObject { .. }) => {
                assert!(e.to_string().contains(what), "{e}")
            }
            other => panic!("{name:?}: {other:?}"),
        }
    }
    assert_eq!(
        Task::answer("en", " \t").prompt(),
        Err(TaskError::EmptyText("question"))
    );
    assert_eq!(
        Task::question("en", "").prompt(),
        Err(TaskError::EmptyText("answer"))
    );
    assert_eq!(
        Task::answer("en", "a\nb").prompt(),
        Err(TaskError::Newline("question"))
    );
    assert_eq!(
        Task::question("en", "a\r\nb").prompt(),
        Err(TaskError::Newline("answer"))
    );
    for (q, token) in [
        ("what is <image> here", "<image>"),
        ("stop<eos>", "<eos>"),
        ("where is <loc0001>?", "<loc0001>"),
        ("x <seg12> y", "<seg12>"),
        ("<unused7>", "<unused7>"),
        ("<start_of_turn>user", "<start_of_turn>"),
    ] {
        assert_eq!(
            Task::answer("en", q).prompt(),
            Err(TaskError::SpecialToken {
                field: "question",
                token: token.into()
            }),
            "{q:?}"
        );
    }
    // Angle brackets that are not tokens are text.
    assert!(
        Task::answer("en", "is <b> bold? <loc> <seg>")
            .prompt()
            .is_ok()
    );
}

#[test]
fn error_messages_are_descriptive() {
    let messages = [
        TaskError::NoObjects("detect").to_string(),
        TaskError::EmptyObject { index: 2 }.to_string(),
        TaskError::EmptyText("question").to_string(),
        TaskError::Newline("answer").to_string(),
        TaskError::Language("EN".into()).to_string(),
        TaskError::SpecialToken {
            field: "question",
            token: "<image>".into(),
        }
        .to_string(),
    ];
    assert_eq!(
        messages[0],
        "no objects given: name at least one object to detect"
    );
    assert_eq!(messages[1], "object name 2 is empty");
    assert!(messages[4].contains("\"EN\"") && messages[4].contains("pt-BR"));
    assert!(messages[5].contains("\"<image>\""));
}

#[test]
fn spec_example_on_640x480() {
    let text = "<loc0051><loc0309><loc0708><loc0646> shoe";
    let out = parse_detections(text, 640, 480);
    assert_eq!(out.skipped, []);
    let [o] = out.objects.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(
        (o.label.as_str(), o.loc, o.seg_codes),
        ("shoe", [51, 309, 708, 646], None)
    );
    assert!(close(o.bbox.x_min, 309.0 / 1023.0 * 640.0));
    assert!(close(o.bbox.y_min, 51.0 / 1023.0 * 480.0));
    assert!(close(o.bbox.x_max, 646.0 / 1023.0 * 640.0));
    assert!(close(o.bbox.y_max, 708.0 / 1023.0 * 480.0));
    assert_eq!(o.bbox.to_pixels(), (193, 23, 404, 332));
    assert!(close(o.bbox.width(), 337.0 / 1023.0 * 640.0));
    assert!(close(o.bbox.height(), 657.0 / 1023.0 * 480.0));

    let demo = parse_objects_with(text, 640, 480, false, Coordinates::Demo);
    let b = demo.objects[0].bbox;
    assert!(close(b.x_min, 309.0 / 1024.0 * 640.0)); // 193.125
    assert!(close(b.y_max, 708.0 / 1024.0 * 480.0)); // 331.875
    assert_eq!(b.to_pixels_rounded(), (193, 24, 404, 332));
    assert_eq!(demo.objects[0].loc, o.loc);
}

#[test]
fn non_square_images_scale_each_axis() {
    let text = format!("{} tall thing", locs([0, 0, 1023, 511]));
    let b = parse_detections(&text, 100, 3000).objects[0].bbox;
    assert_eq!((b.x_min, b.y_min, b.y_max), (0.0, 0.0, 3000.0));
    assert!(close(b.x_max, 511.0 / 1023.0 * 100.0));
    let b = parse_detections(&text, 3000, 100).objects[0].bbox;
    assert_eq!(b.y_max, 100.0);
    assert!(close(b.x_max, 511.0 / 1023.0 * 3000.0));
}

#[test]
fn several_objects_spaces_unicode_and_separators() {
    let text = format!(
        "{} red double-decker bus ; {} 猫 ;{}  chat noir  ",
        locs([1, 2, 500, 600]),
        locs([10, 20, 30, 40]),
        locs([100, 100, 1023, 1023])
    );
    let out = parse_detections(&text, 100, 50);
    assert_eq!(labels(&out), ["red double-decker bus", "猫", "chat noir"]);
    assert_eq!(out.skipped, []);
    let b = out.objects[2].bbox;
    assert_eq!((b.x_max, b.y_max), (100.0, 50.0));
    assert_eq!(out.objects[1].loc, [10, 20, 30, 40]);
}

#[test]
fn missing_separators_newlines_and_control_tokens() {
    // PaliGemma sometimes omits " ; ": the next <loc> run starts a new object.
    let text = format!("{} cat{} dog", locs([1, 2, 3, 4]), locs([5, 6, 7, 8]));
    let out = parse_detections(&text, 10, 10);
    assert_eq!(labels(&out), ["cat", "dog"]);
    assert_eq!(out.skipped, []);
    // Newlines and control tokens separate too and are not reported.
    let text = format!(
        "{} cat\n{} dog<eos><pad><pad>",
        locs([1, 2, 3, 4]),
        locs([5, 6, 7, 8])
    );
    let out = parse_detections(&text, 10, 10);
    assert_eq!(labels(&out), ["cat", "dog"]);
    assert_eq!(out.skipped, []);
    let text = format!("{} cat\nthe end", locs([1, 2, 3, 4]));
    let out = parse_detections(&text, 10, 10);
    assert_eq!(labels(&out), ["cat"]);
    assert_eq!(
        out.skipped,
        [Skipped {
            text: "the end".into(),
            reason: SkipReason::StrayText
        }]
    );
    // Whitespace between tokens is ignored.
    let text = "<loc0001> <loc0002>\t<loc0003> <loc0004>  cat ";
    assert_eq!(labels(&parse_detections(text, 10, 10)), ["cat"]);
    // Separators in odd places.
    let text = format!(
        ";; ; {} a;b ; ; {}; c",
        locs([1, 2, 3, 4]),
        locs([1, 2, 3, 4])
    );
    let out = parse_detections(&text, 10, 10);
    assert_eq!(labels(&out), ["a"]);
    let skipped: Vec<_> = out
        .skipped
        .iter()
        .map(|s| (s.text.as_str(), &s.reason))
        .collect();
    let second = locs([1, 2, 3, 4]);
    assert_eq!(
        skipped,
        [
            ("b", &SkipReason::StrayText),
            (second.as_str(), &SkipReason::MissingLabel),
            ("c", &SkipReason::StrayText),
        ]
    );
}

#[test]
fn empty_and_textual_outputs() {
    assert_eq!(parse_detections("", 10, 10), ParseOutput::default());
    assert_eq!(
        parse_segmentations(" \n ; <eos>", 10, 10),
        ParseOutput::default()
    );
    let out = parse_detections("no objects here", 10, 10);
    assert_eq!(out.objects, []);
    assert_eq!(
        out.skipped,
        [Skipped {
            text: "no objects here".into(),
            reason: SkipReason::StrayText
        }]
    );
    // Text before the first object is reported, the object is kept.
    let out = parse_detections(&format!("sure: {} cat", locs([1, 2, 3, 4])), 10, 10);
    assert_eq!(labels(&out), ["cat"]);
    assert_eq!(out.skipped[0].text, "sure:");
}

#[test]
fn every_skip_reason() {
    let box4 = locs([1, 2, 3, 4]);
    let cases: Vec<(String, bool, SkipReason)> = vec![
        (
            "<loc0001><loc0002><loc0003>".into(),
            false,
            SkipReason::TooFewLocs { found: 3 },
        ),
        (
            format!("{box4}<loc0009> x"),
            false,
            SkipReason::TooManyLocs { found: 5 },
        ),
        (
            locs([1, 2, 3000, 4]) + " x",
            false,
            SkipReason::LocOutOfRange { value: 3000 },
        ),
        (locs([5, 2, 5, 4]) + " x", false, SkipReason::InvertedBox),
        (locs([5, 9, 6, 4]) + " x", false, SkipReason::InvertedBox),
        (
            format!("{box4}<seg001> x"),
            true,
            SkipReason::WrongSegCount { found: 1 },
        ),
        (
            format!("{box4} x"),
            true,
            SkipReason::WrongSegCount { found: 0 },
        ),
        (
            format!("{box4}{} x", segs(|i| if i == 3 { 200 } else { i })),
            true,
            SkipReason::SegOutOfRange { value: 200 },
        ),
        (
            "<loc0001><loc12><loc0003><loc0004> x".into(),
            false,
            SkipReason::MalformedToken {
                token: "<loc12>".into(),
            },
        ),
        (
            format!("{box4}{}<seg0001> x", segs(|i| i).get(8..).unwrap_or("")),
            true,
            SkipReason::MalformedToken {
                token: "<seg0001>".into(),
            },
        ),
        (box4.clone(), false, SkipReason::MissingLabel),
        (
            format!("{box4}{} ", segs(|i| i)),
            true,
            SkipReason::MissingLabel,
        ),
        ("hello".into(), false, SkipReason::StrayText),
        ("<seg001> <seg002>".into(), false, SkipReason::StraySegs),
    ];
    for (text, segments, reason) in cases {
        let out = parse_objects_with(&text, 10, 10, segments, Coordinates::BigVision);
        assert_eq!(out.objects, [], "{text}");
        assert_eq!(
            out.skipped,
            [Skipped {
                text: text.trim().to_string(),
                reason: reason.clone()
            }],
            "{text}"
        );
        assert!(!reason.to_string().is_empty());
    }
}

#[test]
fn truncated_and_odd_tokens() {
    let cat = format!("{} cat", locs([1, 2, 3, 4]));
    // Cut off after a complete object: the partial one is reported.
    assert_eq!(
        reasons(&format!("{cat} ; <loc0005><loc0006>"), false),
        [SkipReason::TooFewLocs { found: 2 }]
    );
    // A partial token is text; it cannot become a token.
    let out = parse_detections(&format!("{cat} ; <loc00"), 10, 10);
    assert_eq!(labels(&out), ["cat"]);
    assert_eq!(out.skipped[0].text, "<loc00");
    // 5-digit and short tokens are malformed, not text of a label.
    assert_eq!(
        reasons("<loc00001><loc0002><loc0003><loc0004> cat", false),
        [SkipReason::MalformedToken {
            token: "<loc00001>".into()
        }]
    );
    let out = parse_detections(&format!("{cat} <loc12> dog"), 10, 10);
    assert_eq!(labels(&out), ["cat"]);
    assert_eq!(
        out.skipped,
        [Skipped {
            text: "<loc12> dog".into(),
            reason: SkipReason::MalformedToken {
                token: "<loc12>".into()
            }
        }]
    );
    // Not tokens at all.
    let out = parse_detections(
        &format!("{} a <b> <loc> <seg>x", locs([1, 2, 3, 4])),
        10,
        10,
    );
    assert_eq!(labels(&out), ["a <b> <loc> <seg>x"]);
    // A huge digit run does not overflow.
    let long = format!("<loc{}>", "9".repeat(100));
    assert!(matches!(
        reasons(&long, false).as_slice(),
        [SkipReason::MalformedToken { .. }]
    ));
    // A 4-digit value above 1023.
    assert_eq!(
        reasons(&format!("{} x", locs([1, 2, 9999, 4])), true),
        [SkipReason::LocOutOfRange { value: 9999 }]
    );
}

#[test]
fn segmentation_outputs() {
    let codes = segs(|i| i * 8);
    let text = format!(
        "{}{codes} cat ; {}{codes} dog",
        locs([0, 0, 511, 1023]),
        locs([512, 0, 1023, 1023])
    );
    let out = parse_segmentations(&text, 64, 32);
    assert_eq!(out.skipped, []);
    assert_eq!(labels(&out), ["cat", "dog"]);
    let want: [u16; 16] = std::array::from_fn(|i| i as u16 * 8);
    assert!(out.objects.iter().all(|o| o.seg_codes == Some(want)));
    assert!(close(out.objects[0].bbox.y_max, 511.0 / 1023.0 * 32.0));
    assert_eq!(format_objects(&out.objects), text);
    // Missing separator between segmentation objects.
    let text = format!(
        "{}{codes} cat{}{codes} dog",
        locs([0, 0, 5, 5]),
        locs([1, 1, 6, 6])
    );
    assert_eq!(labels(&parse_segmentations(&text, 8, 8)), ["cat", "dog"]);
}

#[test]
fn segs_in_a_detection_output() {
    let codes = segs(|i| i);
    // Sixteen valid codes are kept, so a segmentation output parses as detection.
    let text = format!("{}{codes} cat", locs([0, 0, 5, 5]));
    let seg = parse_segmentations(&text, 8, 8);
    assert_eq!(parse_detections(&text, 8, 8), seg);
    // Any other codes are ignored; the box stays.
    for codes in [
        "<seg001><seg002>".to_string(),
        segs(|i| if i == 0 { 500 } else { i }),
        codes.replacen("<seg000>", "<seg0>", 1),
    ] {
        let out = parse_detections(&format!("{}{codes} cat", locs([0, 0, 5, 5])), 8, 8);
        assert_eq!(out.skipped, [], "{codes}");
        assert_eq!(
            (labels(&out), out.objects[0].seg_codes),
            (vec!["cat"], None)
        );
    }
    // <seg> after a label belongs to no object and ends the label.
    let out = parse_detections(&format!("{} cat <seg001> dog", locs([0, 0, 5, 5])), 8, 8);
    assert_eq!(labels(&out), ["cat"]);
    let skipped: Vec<_> = out
        .skipped
        .iter()
        .map(|s| (s.text.as_str(), &s.reason))
        .collect();
    assert_eq!(
        skipped,
        [
            ("<seg001>", &SkipReason::StraySegs),
            ("dog", &SkipReason::StrayText)
        ]
    );
}

#[test]
fn zero_sized_images_give_degenerate_boxes() {
    let out = parse_detections(&format!("{} cat", locs([1, 2, 3, 4])), 0, 10);
    let b = out.objects[0].bbox;
    assert_eq!((b.x_min, b.x_max), (0.0, 0.0));
    assert!(b.y_min < b.y_max);
}

#[test]
fn huge_images_keep_boxes_strictly_ordered() {
    let out = parse_detections(
        &format!("{} cat", locs([1022, 1022, 1023, 1023])),
        u32::MAX,
        u32::MAX,
    );
    let b = out.objects[0].bbox;
    assert!(b.x_min < b.x_max && b.x_max <= f64::from(u32::MAX));
}

#[test]
fn outputs_serialize() {
    let out = parse_detections(&format!("{} cat ; <loc0001>", locs([1, 2, 3, 4])), 10, 10);
    let json = serde_json::to_value(&out).unwrap_or_default();
    assert_eq!(json["objects"][0]["label"], "cat");
    assert_eq!(json["objects"][0]["loc"][3], 4);
    assert_eq!(json["skipped"][0]["reason"]["TooFewLocs"]["found"], 1);
}

#[test]
fn tokens_format_with_fixed_width() {
    assert_eq!(loc_token(51), "<loc0051>");
    assert_eq!(loc_token(1023), "<loc1023>");
    assert_eq!(seg_token(7), "<seg007>");
    assert_eq!(format_objects(&[]), "");
}
