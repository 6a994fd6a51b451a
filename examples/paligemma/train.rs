//! `loss` and `finetune`: the library's training API over JSON-lines data files.

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::{AutodiffBackend, Backend};
use paligemma::train::{
    Example, LoraConfig, Method, Optimizer, Reduction, Schedule, Trainer, read_examples_with,
};
use paligemma::{MaskEncoder, Model};
use serde::Serialize;

use crate::Res;
use crate::args::{FinetuneArgs, LossArgs, MethodArg, OptimizerArg, ScheduleArg};

/// The mask encoder of a checkpoint (or of the demo), when it has a `vae-oid.npz`,
/// for `"masks"` lines.
fn mask_encoder(model_path: &Path) -> Res<Option<MaskEncoder<paligemma::backend::Cpu>>> {
    let device = Default::default();
    if model_path.as_os_str() == "demo" {
        return Ok(Some(MaskEncoder::demo(&device)?));
    }
    let vae = model_path.join("vae-oid.npz");
    Ok(match vae.is_file() {
        true => Some(MaskEncoder::from_npz(&vae, &device)?),
        false => None,
    })
}

/// Read a data file and check that every example becomes a valid batch row before
/// any work starts; errors name the file and line. `encoder` turns `"masks"` lines
/// into segmentation suffixes.
fn examples<B: Backend>(
    model: &Model<B>,
    encoder: Option<&MaskEncoder<paligemma::backend::Cpu>>,
    path: &Path,
) -> Res<Vec<Example>> {
    let lines = read_examples_with(path, encoder)?;
    for (line, ex) in &lines {
        model
            .training_batch(std::slice::from_ref(ex))
            .map_err(|e| format!("{}:{line}: {e}", path.display()))?;
    }
    Ok(lines.into_iter().map(|(_, ex)| ex).collect())
}

#[derive(Serialize)]
struct LossJson {
    loss: f64,
    per_example: Vec<f32>,
    tokens: usize,
}

/// The token-weighted loss over `examples` in batches of `batch_size`, with each
/// example's mean loss; one batch gives transformers' loss of the whole file.
fn data_loss<B: Backend>(
    model: &Model<B>,
    examples: &[Example],
    batch_size: usize,
) -> Res<LossJson> {
    let mut out = LossJson {
        loss: 0.0,
        per_example: Vec::with_capacity(examples.len()),
        tokens: 0,
    };
    let mut total = 0.0f64;
    for chunk in examples.chunks(batch_size.max(1)) {
        let batch = model.training_batch(chunk)?;
        let loss = model.loss(&batch, Reduction::Tokens)?;
        let n = batch.supervised_tokens();
        total += f64::from(loss.scalar()?) * n as f64;
        out.tokens += n;
        out.per_example.extend(loss.per_example()?);
    }
    out.loss = total / out.tokens.max(1) as f64;
    Ok(out)
}

pub fn loss<B: Backend>(args: &LossArgs, device: &B::Device) -> Res<()> {
    let model = crate::commands::open_model::<B>(&args.model, device, &Default::default())?;
    let encoder = mask_encoder(&args.model)?;
    let examples = examples(&model, encoder.as_ref(), &args.data)?;
    let out = data_loss(&model, &examples, args.batch_size.unwrap_or(examples.len()))?;
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("loss {:.6} over {} tokens", out.loss, out.tokens);
    }
    Ok(())
}

#[derive(Serialize)]
struct StepJson {
    step: usize,
    loss: f32,
    lr: f64,
    /// Wall-clock seconds of this step (batches, forward, backward, update).
    seconds: f64,
}

#[derive(Serialize)]
struct FinalJson<'a> {
    final_loss: f64,
    eval: Option<EvalJson>,
    out: &'a Path,
}

/// Held-out loss and the task metrics of greedy outputs.
#[derive(Serialize)]
struct EvalJson {
    #[serde(flatten)]
    loss: LossJson,
    /// Fraction of the examples with a plain-text target answered exactly.
    exact_match: Option<f64>,
    /// Detection targets: recall at IoU 0.5, mean IoU of matches, spurious boxes.
    detection: Option<DetectionJson>,
    /// Segmentation targets (with a mask decoder): each true object's best mask IoU
    /// among the predicted objects of its label (0 when none), averaged.
    segmentation: Option<SegmentationJson>,
}

#[derive(Serialize)]
struct SegmentationJson {
    mean_mask_iou: f64,
    objects: usize,
}

#[derive(Serialize)]
struct DetectionJson {
    recall_iou50: f64,
    mean_iou: f64,
    spurious: usize,
    targets: usize,
}

/// Greedy outputs for `examples`, scored against their suffixes: detection metrics
/// where the suffix parses as boxes (and mask IoU where it has `<seg>` codes and the
/// model a mask decoder), exact match elsewhere.
fn evaluate<B: Backend>(
    model: &Model<B>,
    examples: &[Example],
    batch_size: usize,
) -> Res<EvalJson> {
    use paligemma::task::{
        DetectionMatch, exact_match, mask_iou, parse_detections, segmentations_from_text,
    };
    let loss = data_loss(model, examples, batch_size)?;
    let (mut exact, mut texts) = (0usize, 0usize);
    let mut boxes: Option<DetectionMatch> = None;
    let mut masks: Option<(f64, usize)> = None;
    for ex in examples {
        let budget = model.tokenizer().suffix_ids(&ex.suffix)?.len() + 16;
        let options = paligemma::GenerateOptions::default().max_new_tokens(budget);
        let out = model.generate(&ex.images, &ex.prefix, &options)?;
        // Box targets come with one image (read_examples refuses them otherwise).
        let (w, h) = ex
            .images
            .first()
            .map_or((1, 1), |i| (i.width(), i.height()));
        let target = parse_detections(&ex.suffix, w, h);
        if !target.objects.is_empty() && target.skipped.is_empty() {
            let predicted = parse_detections(&out.text, w, h).objects;
            let m = DetectionMatch::of(&predicted, &target.objects);
            boxes = Some(boxes.map_or(m, |b| b + m));
            let decoder = model.mask_decoder();
            if let Some(decoder) =
                decoder.filter(|_| target.objects.iter().all(|o| o.seg_codes.is_some()))
            {
                let (truth, _) = segmentations_from_text(&ex.suffix, w, h, decoder)?;
                let (predicted, _) = segmentations_from_text(&out.text, w, h, decoder)?;
                let (mut sum, n) = masks.unwrap_or((0.0, 0));
                for t in &truth {
                    sum += predicted
                        .iter()
                        .filter(|p| p.label == t.label)
                        .map(|p| mask_iou(&p.mask, &t.mask))
                        .fold(0.0, f64::max);
                }
                masks = Some((sum, n + truth.len()));
            }
        } else {
            texts += 1;
            exact += usize::from(exact_match(&out.text, &ex.suffix));
        }
    }
    Ok(EvalJson {
        loss,
        exact_match: (texts > 0).then(|| exact as f64 / texts as f64),
        detection: boxes.map(|m| DetectionJson {
            recall_iou50: m.recall(),
            mean_iou: m.mean_iou(),
            spurious: m.spurious(),
            targets: m.targets,
        }),
        segmentation: masks.map(|(sum, n)| SegmentationJson {
            mean_mask_iou: if n == 0 { 0.0 } else { sum / n as f64 },
            objects: n,
        }),
    })
}

/// SplitMix64, for a reproducible shuffle.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

pub fn finetune<B: AutodiffBackend>(args: &FinetuneArgs, device: &B::Device) -> Res<()> {
    let method = match args.method {
        MethodArg::Full => Method::Full,
        MethodArg::Attention => Method::Attention,
        MethodArg::Lora => Method::Lora(LoraConfig {
            rank: args.lora_rank,
            alpha: args.lora_alpha,
            seed: args.seed,
            ..Default::default()
        }),
    };
    if args.out.exists() {
        return Err(format!("{} already exists", args.out.display()).into());
    }
    if matches!(args.method, MethodArg::Lora)
        && (args.save_optimizer || args.resume_optimizer.is_some())
    {
        // OUT holds the merged weights: a resumed run would start fresh adapters.
        return Err(
            "--save-optimizer and --resume-optimizer work with --method full or \
                    attention; resume LoRA runs from the library (Model::with_lora_adapter, \
                    Trainer::load_optimizer_state)"
                .into(),
        );
    }
    let optimizer = match args.optimizer {
        OptimizerArg::Sgd => Optimizer::Sgd {
            momentum: args.momentum,
            weight_decay: args.weight_decay.unwrap_or(0.0),
        },
        OptimizerArg::Adamw => match Optimizer::adamw() {
            Optimizer::AdamW {
                beta1,
                beta2,
                epsilon,
                weight_decay,
            } => Optimizer::AdamW {
                beta1,
                beta2,
                epsilon,
                weight_decay: args.weight_decay.unwrap_or(weight_decay),
            },
            other => other,
        },
    };
    let model = crate::commands::open_model::<B>(&args.model, device, &Default::default())?;
    let encoder = mask_encoder(&args.model)?;
    let train = examples(&model, encoder.as_ref(), &args.data)?;
    let eval = match &args.eval {
        Some(path) => Some(examples(&model, encoder.as_ref(), path)?),
        None => None,
    };
    let batch_size = args.batch_size.max(1);
    let accum = args.grad_accum.max(1);
    let per_epoch = train.len().div_ceil(batch_size * accum);
    let steps = args
        .steps
        .unwrap_or_else(|| args.epochs.unwrap_or(1) * per_epoch);
    if args.start_step >= steps {
        return Err(format!(
            "--start-step {} leaves nothing to do of {steps} steps",
            args.start_step
        )
        .into());
    }
    let schedule = match args.schedule {
        ScheduleArg::Constant => Schedule::Constant,
        ScheduleArg::Cosine => Schedule::Cosine,
        ScheduleArg::Linear => Schedule::Linear,
    };
    let mut trainer = Trainer::new(model, method, optimizer)?;
    if let Some(c) = args.clip_norm {
        trainer = trainer.with_clip_norm(c);
    }
    if args.freeze_vision {
        trainer = trainer.with_frozen_vision()?;
    }
    if let Some(state) = &args.resume_optimizer {
        trainer = trainer.load_optimizer_state(state)?;
    }
    let start = Instant::now();
    // Every epoch's example order, concatenated as far as the steps need.
    let per_step = batch_size * accum;
    let mut order = Vec::with_capacity(steps * per_step);
    let mut epoch = 0u64;
    while order.len() < steps * per_step {
        let mut this: Vec<usize> = (0..train.len()).collect();
        if !args.no_shuffle {
            shuffle(&mut this, args.seed.wrapping_add(epoch));
        }
        order.extend(this);
        epoch += 1;
    }
    let todo = order.chunks(per_step).take(steps).enumerate();
    for (i, chunk) in todo.skip(args.start_step) {
        let step_start = Instant::now();
        let batches = chunk
            .chunks(batch_size)
            .map(|part| {
                let examples: Vec<Example> = part.iter().map(|&j| train[j].clone()).collect();
                trainer.model()?.training_batch(&examples)
            })
            .collect::<paligemma::Result<Vec<_>>>()?;
        let lr = schedule.rate(args.lr, i, steps, args.warmup);
        let loss = trainer.step_accumulated(&batches, lr)?;
        let step = i + 1;
        if args.json {
            let seconds = step_start.elapsed().as_secs_f64();
            let line = StepJson {
                step,
                loss,
                lr,
                seconds,
            };
            println!("{}", serde_json::to_string(&line)?);
        } else {
            let rate = (step - args.start_step) as f64 / start.elapsed().as_secs_f64();
            eprintln!("step {step}/{steps}  loss {loss:.4}  lr {lr:.3e}  {rate:.2} steps/s");
        }
    }
    // The optimiser's state goes in once the checkpoint is in place (a partial
    // checkpoint must not look resumable).
    let state = match args.save_optimizer {
        true => {
            let tmp =
                std::env::temp_dir().join(format!("paligemma-optimizer-{}", std::process::id()));
            trainer.save_optimizer_state(&tmp)?;
            Some(tmp)
        }
        false => None,
    };
    // Evaluation, merging and saving need no autodiff graph.
    let model = trainer.into_model()?.valid();
    let final_loss = data_loss(&model, &train, batch_size)?.loss;
    let eval = match &eval {
        Some(examples) => Some(evaluate(&model, examples, batch_size)?),
        None => None,
    };
    if model.has_lora() {
        // The merged weights in `out`, the adapter alone in `out/adapter`, written
        // once the merged checkpoint is in place.
        let adapter =
            std::env::temp_dir().join(format!("paligemma-adapter-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&adapter);
        model.save_lora_adapter(&adapter)?;
        model.merge_lora()?.save_pretrained(&args.out, None)?;
        let target = args.out.join("adapter");
        if std::fs::rename(&adapter, &target).is_err() {
            copy_dir(&adapter, &target)?;
            let _ = std::fs::remove_dir_all(&adapter);
        }
    } else {
        model.save_pretrained(&args.out, None)?;
    }
    if let Some(tmp) = state {
        let target = args.out.join("optimizer.mpk");
        if std::fs::rename(&tmp, &target).is_err() {
            std::fs::copy(&tmp, &target)?;
            let _ = std::fs::remove_file(&tmp);
        }
    }
    let summary = FinalJson {
        final_loss,
        eval,
        out: &args.out,
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        eprintln!("final loss {final_loss:.4}; saved {}", args.out.display());
    }
    Ok(())
}

/// Copy the files of `from` into a new directory `to` (across file systems).
fn copy_dir(from: &Path, to: &Path) -> Res<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}
