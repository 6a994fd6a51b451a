//! The command-line tool (`examples/paligemma`, built by `cargo test` beside the test
//! binaries) on the tiny fixture: several images and frames per prompt, and `generate
//! --batch` going on past bad lines. A plain `cargo test` builds the example first;
//! `cargo test --test cli` alone runs whatever example binary was built last.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::fixtures;

fn cli() -> Option<PathBuf> {
    // target/<profile>/deps/cli-<hash> -> target/<profile>/examples/paligemma
    let exe = std::env::current_exe().ok()?;
    let path = exe
        .parent()?
        .parent()?
        .join("examples")
        .join(format!("paligemma{}", std::env::consts::EXE_SUFFIX));
    path.is_file().then_some(path)
}

fn run(args: &[&str]) -> Option<Output> {
    run_with_env(args, &[])
}

fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> Option<Output> {
    let Some(cli) = cli() else {
        eprintln!("skipped: the paligemma example is not built beside the tests");
        return None;
    };
    let mut command = Command::new(cli);
    command.args(args).env_remove("PALIGEMMA_KERNELS");
    for (key, value) in env {
        command.env(key, value);
    }
    Some(command.output().unwrap())
}

fn image(name: &str) -> String {
    fixtures().join("images").join(name).display().to_string()
}

fn model() -> String {
    fixtures().join("pg1-tiny").display().to_string()
}

fn last_json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap()
}

#[test]
fn repeated_images_and_frames_make_one_prompt() {
    let m = model();
    let (a, b) = (image("photo.png"), image("gray.png"));
    let Some(two) = run(&[
        "caption", "--model", &m, "--image", &a, "--image", &b, "--json",
    ]) else {
        return;
    };
    assert!(
        two.status.success(),
        "{}",
        String::from_utf8_lossy(&two.stderr)
    );
    // 16 image tokens per image, <bos>, "caption en" (2 tokens), "\n".
    assert_eq!(
        last_json(&two)["prompt_ids"].as_array().unwrap().len(),
        2 * 16 + 4
    );

    let dir = fixtures().join("images").display().to_string();
    let frames = run(&[
        "caption",
        "--model",
        &m,
        "--frames",
        &dir,
        "--max-frames",
        "3",
        "--json",
    ])
    .unwrap();
    assert!(
        frames.status.success(),
        "{}",
        String::from_utf8_lossy(&frames.stderr)
    );
    assert_eq!(
        last_json(&frames)["prompt_ids"].as_array().unwrap().len(),
        3 * 16 + 4
    );

    let detect = run(&[
        "detect", "--model", &m, "--image", &a, "--image", &b, "--object", "cat",
    ])
    .unwrap();
    assert!(!detect.status.success());
    assert!(String::from_utf8_lossy(&detect.stderr).contains("take one image"));
}

#[test]
fn batch_lines_fail_alone_and_carry_their_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("batch.jsonl");
    let (a, b) = (image("photo.png"), image("gray.png"));
    let lines = [
        serde_json::json!({"images": [a, b], "prompt": "caption en"}).to_string(),
        "not json".into(),
        serde_json::json!({"image": "missing.png", "prompt": "caption en"}).to_string(),
        String::new(),
        serde_json::json!({"image": a, "prompt": "<image> caption en"}).to_string(),
        serde_json::json!({"image": b, "prompt": "caption en"}).to_string(),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let f = file.display().to_string();
    let m = model();
    let Some(out) = run(&[
        "generate",
        "--model",
        &m,
        "--batch",
        &f,
        "--batch-size",
        "3",
        "--max-new-tokens",
        "3",
    ]) else {
        return;
    };
    assert!(!out.status.success(), "failed lines make the run fail");
    let results: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let numbers: Vec<u64> = results
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        [1, 2, 3, 5, 6],
        "one output per non-blank line, in order"
    );
    let failed: Vec<bool> = results.iter().map(|r| r.get("error").is_some()).collect();
    assert_eq!(failed, [false, true, true, true, false]);
    assert!(
        results[2]["error"]
            .as_str()
            .unwrap()
            .contains("missing.png")
    );
    // The rows that are fine get the same ids as alone.
    for (r, img) in [(&results[0], vec![&a, &b]), (&results[4], vec![&b])] {
        let mut args = vec!["generate", "--model", &m, "--prompt", "caption en"];
        for i in &img {
            args.extend(["--image", i.as_str()]);
        }
        args.extend(["--max-new-tokens", "3", "--json"]);
        let alone = last_json(&run(&args).unwrap());
        assert_eq!(r["generated_ids"], alone["generated_ids"]);
    }
}

/// A truncated JPEG still runs, with a warning on stderr naming the file.
#[test]
fn truncated_jpeg_is_warned_about() {
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(160, 120, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 5) as u8, ((x * y) % 251) as u8])
    }));
    let mut jpeg = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut jpeg),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.jpg");
    std::fs::write(&cut, &jpeg[..jpeg.len() * 3 / 4]).unwrap();
    let cut = cut.display().to_string();
    let Some(out) = run(&["caption", "--model", &model(), "--image", &cut]) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("cut.jpg") && stderr.contains("truncated"),
        "{stderr}"
    );
}

/// An `--out` path that cannot be written fails before any work: even with a model
/// directory that does not exist, the error is about the output.
#[test]
fn unwritable_out_fails_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let missing_model = dir.path().join("no-model").display().to_string();
    let photo = image("photo.png");
    for (out, why) in [
        (
            dir.path().join("missing/dir/boxes.png"),
            "is not a directory",
        ),
        (dir.path().join("boxes.unknown-extension"), "cannot write"),
    ] {
        let out = out.display().to_string();
        let Some(run) = run(&[
            "detect",
            "--model",
            &missing_model,
            "--image",
            &photo,
            "--object",
            "cat",
            "--out",
            &out,
        ]) else {
            return;
        };
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success());
        assert!(stderr.contains(why) && stderr.contains(&out), "{stderr}");
        assert!(
            !stderr.contains("no-model"),
            "the model was not touched: {stderr}"
        );
    }
}

/// `PALIGEMMA_KERNELS` forces a kernel level for host weights: an unknown level is an
/// error naming the variable before any work; the portable level gives the greedy
/// tokens of the detected one; backend weights ignore the variable.
#[test]
fn kernel_level_is_forced_or_refused() {
    let (m, photo) = (model(), image("photo.png"));
    let args = |weights| {
        vec![
            "--weights",
            weights,
            "caption",
            "--model",
            &m,
            "--image",
            &photo,
            "--json",
        ]
    };
    let Some(bad) = run_with_env(&args("bf16"), &[("PALIGEMMA_KERNELS", "avx9000")]) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        stderr.contains("PALIGEMMA_KERNELS") && stderr.contains("portable"),
        "{stderr}"
    );
    let ids = |out: &Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        last_json(out)["generated_ids"].clone()
    };
    let detected = ids(&run(&args("f32")).unwrap());
    let portable = run_with_env(&args("f32"), &[("PALIGEMMA_KERNELS", "portable")]).unwrap();
    assert_eq!(ids(&portable), detected);
    let backend = run_with_env(&args("backend"), &[("PALIGEMMA_KERNELS", "avx9000")]).unwrap();
    assert!(backend.status.success());
}

/// `finetune --save-optimizer` then `finetune --resume-optimizer --start-step` from
/// the saved checkpoint gives the losses of the uninterrupted run.
#[test]
fn finetune_resumes_from_its_saved_optimizer_state() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    let line = |img: &str, suffix: &str| {
        serde_json::json!({"image": image(img), "prefix": "caption en", "suffix": suffix})
            .to_string()
    };
    let lines = [line("photo.png", "a photo"), line("gray.png", "gray")];
    std::fs::write(&data, lines.join("\n")).unwrap();
    let data = data.display().to_string();
    let finetune = |model: &str, out: &str, extra: &[&str]| -> Option<Vec<f32>> {
        let out = tmp.path().join(out).display().to_string();
        let mut args = vec![
            "finetune",
            "--model",
            model,
            "--data",
            &data,
            "--out",
            &out,
            "--method",
            "attention",
            "--lr",
            "3e-3",
            "--seed",
            "5",
            "--json",
        ];
        args.extend_from_slice(extra);
        let output = run(&args)?;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let losses = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("step").and(v["loss"].as_f64()))
            .map(|l| l as f32)
            .collect();
        Some(losses)
    };
    let m = model();
    let Some(whole) = finetune(&m, "whole", &["--steps", "4"]) else {
        return;
    };
    let first = finetune(&m, "first", &["--steps", "2", "--save-optimizer"]).unwrap();
    assert_eq!(first, whole[..2], "the same first two steps");
    let saved = tmp.path().join("first");
    assert!(saved.join("optimizer.mpk").is_file() && saved.join("model.safetensors").is_file());
    let state = saved.join("optimizer.mpk").display().to_string();
    let saved = saved.display().to_string();
    let rest = [
        "--steps",
        "4",
        "--start-step",
        "2",
        "--resume-optimizer",
        &state,
    ];
    let second = finetune(&saved, "second", &rest).unwrap();
    assert_eq!(second.len(), 2);
    for (got, want) in second.iter().zip(&whole[2..]) {
        assert!(
            (got - want).abs() <= 1e-5 * want.abs(),
            "{second:?} vs {whole:?}"
        );
    }
}
