//! The typed task methods on the model, end to end on the tiny fixtures.

mod common;

use common::{fixtures, open_image};
use paligemma::task::{Task, parse_detections};
use paligemma::{Error, GenerateOptions, Model, backend::Cpu};

fn model() -> Model<Cpu> {
    Model::<Cpu>::from_pretrained(fixtures().join("pg1-tiny"), &Default::default()).unwrap()
}

#[test]
fn detection_results_are_the_parsed_generation_in_original_pixels() {
    let model = model();
    // A non-square original: boxes must be scaled to 50 x 70, not to the 56 x 56 input.
    let image = open_image("noise.png");
    let options = GenerateOptions::default().max_new_tokens(24);
    let out = model
        .detect_with(&image, &["cat", "dog"], &options)
        .unwrap();
    let again = model
        .run_task(&image, &Task::detect(&["cat", "dog"]), &options)
        .unwrap();
    assert_eq!(out.generation.generated_ids, again.generated_ids);
    let parsed = parse_detections(&again.text, 50, 70);
    assert_eq!(out.objects.len(), parsed.objects.len());
    assert_eq!(out.skipped, parsed.skipped);
    for (d, p) in out.objects.iter().zip(&parsed.objects) {
        assert_eq!((&d.label, d.bbox), (&p.label, p.bbox));
        assert!(d.bbox.x_max <= 50.0 && d.bbox.y_max <= 70.0);
    }
}

#[test]
fn text_tasks_use_the_trained_prompts() {
    let model = model();
    let image = open_image("photo.png");
    let options = GenerateOptions::default().max_new_tokens(64);
    let expect = |task: Task| model.run_task(&image, &task, &options).unwrap().text;
    assert_eq!(
        model.caption(&image, "en").unwrap(),
        expect(Task::caption("en"))
    );
    assert_eq!(
        model.answer(&image, "en", "what is this?").unwrap(),
        expect(Task::answer("en", "what is this?"))
    );
    let ocr = model
        .run_task(
            &image,
            &Task::Ocr,
            &GenerateOptions::default().max_new_tokens(256),
        )
        .unwrap();
    assert_eq!(model.ocr(&image).unwrap(), ocr.text);
    assert_eq!(ocr.prompt_ids, model.prompt_ids("ocr").unwrap());
}

#[test]
fn segmentation_without_a_decoder_says_where_to_get_one() {
    let model = model();
    let err = model
        .segment(&open_image("photo.png"), "cat")
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::MaskDecoder(_)) && err.to_string().contains("vae-oid.npz"),
        "{err}"
    );
    let err = model.detect(&open_image("photo.png"), " ").err().unwrap();
    assert!(matches!(err, Error::Task(_)), "{err}");
}

#[test]
fn segmentation_runs_with_a_decoder() {
    let model = model()
        .with_mask_decoder(fixtures().join("vae/vae-oid-random.npz"))
        .unwrap();
    let image = open_image("photo.png");
    let out = model
        .segment_with(
            &image,
            &["cat"],
            &GenerateOptions::default().max_new_tokens(30),
        )
        .unwrap();
    // Random weights rarely emit a well-formed mask; whatever they emit is accounted for.
    for s in &out.objects {
        assert_eq!((s.mask.width, s.mask.height), (96, 64));
        assert_eq!(s.mask64.len(), 64 * 64);
    }
    let parsed = paligemma::task::parse_segmentations(&out.generation.text, 96, 64);
    assert_eq!(out.objects.len(), parsed.objects.len());
    assert_eq!(out.skipped, parsed.skipped);
}
